#!/usr/bin/python3
# unit-exec.py: run the ExecStart= of a systemd unit file the way systemd
# would, for tests where systemd is not PID 1 (tests/test-service-units.sh).
#
#   unit-exec.py [--map PREFIX=DIR]... [--subst WORD=WORD]...
#                [--env NAME=VALUE]... [--listen SOCKETUNIT] [--print]
#                UNITFILE INSTANCE
#
# Specifiers %i %I %t %S %% are expanded (%t = /run, %S = /var/lib, both
# through --map), EnvironmentFile= is read (its path through --map) and
# $VAR / ${VAR} expanded as systemd does ($VAR: split at whitespace,
# removed if empty; ${VAR}: one argument).  StateDirectory= and
# RuntimeDirectory= are made (mode as the unit says).  --subst replaces
# one whole argument (an installed path by the build's).  --listen: bind
# the ListenStream= of that socket unit and pass it as fd 3 with
# LISTEN_FDS=1 and LISTEN_PID, as systemd does when the service starts
# with its socket unit.  --env: set NAME for the command only (not for
# this script: e.g. LD_PRELOAD of libasan, under which python3 hangs).
# --print: print the argv, one per line, instead.
import os, re, shlex, socket, sys

args = sys.argv[1:]
maps, substs, listen, pr, extra_env = [], {}, None, False, {}
while args and args[0].startswith("--"):
    o = args.pop(0)
    if o == "--map":
        k, v = args.pop(0).split("=", 1); maps.append((k, v))
    elif o == "--subst":
        k, v = args.pop(0).split("=", 1); substs[k] = v
    elif o == "--env":
        k, v = args.pop(0).split("=", 1); extra_env[k] = v
    elif o == "--listen":
        listen = args.pop(0)
    elif o == "--print":
        pr = True
unitfile, instance = args

def mapped(p):
    for k, v in maps:
        if p == k or p.startswith(k.rstrip("/") + "/"):
            return v + p[len(k.rstrip("/")):]
    return p

def spec(s):
    table = {"i": instance, "I": instance, "t": "/run", "S": "/var/lib",
             "%": "%"}
    return re.sub(r"%(.)", lambda m: table[m.group(1)], s)

def keys(path, section):
    out, cur = [], None
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            cur = line.strip("[]"); continue
        if cur == section:
            k, v = line.split("=", 1); out.append((k.strip(), v.strip()))
    return out

svc = keys(unitfile, "Service")
env = dict(os.environ)
for k, v in svc:
    if k == "EnvironmentFile":
        for line in open(mapped(spec(v.lstrip("-")))):
            line = line.strip()
            if line and line[0] not in "#;":
                n, val = line.split("=", 1)
                env[n] = " ".join(shlex.split(val)) if val[:1] in "\"'" else val
modes = {k: int(v, 8) for k, v in svc if k.endswith("DirectoryMode")}
for k, root in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run")):
    for k2, v in svc:
        if k2 == k:
            for d in spec(v).split():
                p = mapped(os.path.join(root, d))
                os.makedirs(p, exist_ok=True)
                os.chmod(p, modes.get(k + "Mode", 0o755))

execs = [v for k, v in svc if k == "ExecStart"]
assert len(execs) == 1, "one ExecStart= expected"
argv = []
for w in shlex.split(execs[0]):
    w = spec(w)
    m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
    if m:
        argv += env.get(m.group(1), "").split()
        continue
    w = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), w)
    w = substs.get(w, w)
    argv.append(mapped(w) if w.startswith("/run/") or w.startswith("/var/lib/") else w)
    # key=/path arguments: map the path part too
    if "=" in argv[-1] and not argv[-1].startswith("/"):
        kk, vv = argv[-1].split("=", 1)
        argv[-1] = kk + "=" + mapped(vv)

if pr:
    print("\n".join(argv)); sys.exit(0)
if listen:
    path = mapped(spec(dict(keys(listen, "Socket"))["ListenStream"]))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    s.bind(path); s.listen(128)
    if s.fileno() != 3:
        os.dup2(s.fileno(), 3); s.close()
    os.set_inheritable(3, True)
    env["LISTEN_FDS"] = "1"; env["LISTEN_PID"] = str(os.getpid())
env.update(extra_env)
os.execvpe(argv[0], argv, env)
