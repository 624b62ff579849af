//! seccomp: an OCI `linux.seccomp` profile compiled with libseccomp.
//! The filter is built before the container process is set up and loaded
//! as late as possible (just before execve when noNewPrivileges is set), so
//! profiles need not allow the runtime's own setup syscalls.

use anyhow::{bail, Context, Result};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use std::str::FromStr;

/// Structural checks that need no libseccomp (used by config validation).
pub fn validate(sc: &LinuxSeccomp) -> Result<()> {
    for s in sc.syscalls().iter().flatten() {
        if s.names().is_empty() {
            bail!("seccomp rule without syscall names");
        }
        if s.action() == LinuxSeccompAction::ScmpActNotify
            || sc.default_action() == LinuxSeccompAction::ScmpActNotify
        {
            bail!("seccomp SCMP_ACT_NOTIFY is not supported");
        }
        for a in s.args().iter().flatten() {
            if a.index() > 5 {
                bail!("seccomp argument index {} is above 5", a.index());
            }
        }
    }
    Ok(())
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16)
        }
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => bail!("seccomp SCMP_ACT_NOTIFY is not supported"),
    })
}

fn op(o: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (ScmpCompareOp, u64) {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0))
        }
    }
}

/// Compiles the profile. `nnp` is whether the process sets no_new_privs
/// itself (libseccomp would otherwise set it on load).
pub fn build(sc: &LinuxSeccomp, nnp: bool) -> Result<ScmpFilterContext> {
    let def = action(sc.default_action(), sc.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(def).context("seccomp_init")?;
    ctx.set_ctl_nnp(nnp)?;
    for a in sc.architectures().iter().flatten() {
        let name = serde_json::to_value(a)?;
        let name = name.as_str().unwrap_or_default().to_string();
        let arch =
            ScmpArch::from_str(&name).with_context(|| format!("seccomp architecture {name}"))?;
        ctx.add_arch(arch)
            .with_context(|| format!("adding seccomp architecture {name}"))?;
    }
    for f in sc.flags().iter().flatten() {
        match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                ctx.set_ctl_log(true)?;
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                ctx.set_ctl_ssb(true)?;
            }
            _ => {}
        }
    }
    for rule in sc.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == def {
            continue; // libseccomp rejects rules equal to the default
        }
        let args = rule.args().as_deref().unwrap_or_default();
        let cmps: Vec<ScmpArgCompare> = args
            .iter()
            .map(|a| {
                let (o, datum) = op(a.op(), a.value(), a.value_two());
                ScmpArgCompare::new(a.index() as u32, o, datum)
            })
            .collect();
        // Several comparisons on one argument mean "any of" (runc's reading);
        // on distinct arguments, "all of".
        let mut idx: Vec<usize> = args.iter().map(|a| a.index()).collect();
        idx.sort_unstable();
        let same_arg = idx.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(sys) = ScmpSyscall::from_name(name) else {
                continue; // unknown on this kernel/arch: skipped as runc does
            };
            let r = if cmps.is_empty() {
                ctx.add_rule(act, sys)
            } else if same_arg {
                cmps.iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, sys, &[*c]).map(drop))
                    .map(|_| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, sys, &cmps)
            };
            r.with_context(|| format!("seccomp rule for {name}"))?;
        }
    }
    Ok(ctx)
}

pub fn load(ctx: &ScmpFilterContext) -> Result<()> {
    ctx.load().context("loading seccomp filter")
}
