#!/usr/bin/env python3
"""A stand-in for `ferro run` in managed mode, speaking docs/CONTROL.md, for
the daemon's tests that need many fast VMs (crash loops, kill -9 storms,
100 clients). Test hooks ride on --append:
  fake-crash-after=S   exit 3 ("crashed") after S seconds
  fake-crash-once=F    the same after 0.3 s, unless file F exists (creates it)
  fake-fail            exit 1 ("error") at once
  fake-no-agent        powerdown is not delivered
  fake-slow-start=S    wait S seconds before listening
"""
import json, os, signal, socket, sys, threading, time

args = sys.argv[1:]
opt = {}
flags = set()
i = 0
while i < len(args):
    a = args[i]
    if a in ("--paused", "-S"):
        flags.add("paused"); i += 1; continue
    if a.startswith("--") and i + 1 < len(args):
        opt.setdefault(a[2:], []).append(args[i + 1]); i += 2; continue
    sys.stderr.write("fake-vmm: unexpected argument %r\n" % a); sys.exit(1)

def one(k, d=None):
    return opt.get(k, [d])[-1]

hooks = dict(h.split("=", 1) if "=" in h else (h, "") for h in (one("append", "") or "").split())
status_file = one("status-file")
lock = threading.Lock()
state = {"run": "paused" if "paused" in flags else "running"}
snapdir = one("snapshot-dir") or os.path.dirname(one("control"))

def finish(code, reason, message=""):
    with lock:
        if status_file:
            tmp = status_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"exit_code": code, "reason": reason, "message": message}, f)
            os.rename(tmp, status_file)
        os._exit(code)

if "fake-fail" in hooks:
    sys.stderr.write("fake-vmm: failing as asked\n")
    finish(1, "error", "asked to fail")
if "fake-slow-start" in hooks:
    time.sleep(float(hooks["fake-slow-start"]))
signal.signal(signal.SIGTERM, lambda *_: finish(0, "quit"))

def snaps():
    p = os.path.join(snapdir, "fake-snapshots.json")
    try:
        with open(p) as f: return json.load(f), p
    except FileNotFoundError:
        return {}, p

def handle(req):
    cmd = req.get("cmd")
    if cmd == "status":
        return {"state": state["run"], "name": one("name"), "uuid": one("uuid"), "pid": os.getpid(),
                "arch": one("arch", "riscv64"), "cpus": int(one("cpus", "1")), "memory_bytes": 0}
    if cmd == "pause": state["run"] = "paused"; return None
    if cmd == "resume": state["run"] = "running"; return None
    if cmd == "quit":
        threading.Timer(0.01, finish, (0, "quit")).start(); return None
    if cmd == "powerdown":
        if "fake-no-agent" in hooks: return {"delivered": False}
        state["run"] = "shutdown"
        threading.Timer(0.05, finish, (0, "poweroff")).start()
        return {"delivered": True}
    if cmd in ("snapshot-create", "snapshot-revert", "snapshot-delete", "snapshot-list"):
        s, p = snaps()
        name = req.get("name")
        if cmd == "snapshot-create":
            s[name] = {"name": name, "date_sec": int(time.time()), "vm_state_size": 4096, "disks": []}
        elif cmd == "snapshot-list":
            return list(s.values())
        elif name not in s:
            raise ValueError("no snapshot %r" % name)
        elif cmd == "snapshot-delete":
            del s[name]
        tmp = p + ".tmp"
        with open(tmp, "w") as f: json.dump(s, f)
        os.rename(tmp, p)
        return None
    if cmd == "save":
        if state["run"] != "paused": raise ValueError("the VM must be paused")
        with open(req["path"], "w") as f: json.dump({"fake-state": one("uuid")}, f)
        return None
    raise ValueError("unknown command %r" % cmd)

def serve_control(conn):
    f = conn.makefile("rwb")
    for line in f:
        try:
            req = json.loads(line)
            r = handle(req)
            resp = {"ok": True} if r is None else {"ok": True, "result": r}
        except Exception as e:
            resp = {"ok": False, "error": str(e)}
        if isinstance(req, dict) and "id" in req: resp["id"] = req["id"]
        f.write((json.dumps(resp) + "\n").encode()); f.flush()

def listen(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path); os.chmod(path, 0o600); s.listen(64)
    return s

def accept_loop(s, fn):
    while True:
        c, _ = s.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()

def serve_console(conn):
    conn.sendall(b"fake console\n# ")
    while True:
        d = conn.recv(4096)
        if not d: return
        conn.sendall(d)

if one("console-socket"):
    threading.Thread(target=accept_loop, args=(listen(one("console-socket")), serve_console), daemon=True).start()
if one("serial-log"):
    with open(one("serial-log"), "a") as f: f.write("fake-vmm %s booted\n" % one("name"))
if "fake-crash-after" in hooks:
    threading.Timer(float(hooks["fake-crash-after"]), finish, (3, "crashed", "kernel panic")).start()
if "fake-crash-once" in hooks and not os.path.exists(hooks["fake-crash-once"]):
    open(hooks["fake-crash-once"], "w").close()
    threading.Timer(0.3, finish, (3, "crashed", "kernel panic")).start()
accept_loop(listen(one("control")), serve_control)
