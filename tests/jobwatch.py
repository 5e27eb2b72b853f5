# nbdsnap tests: run a long nbdsnapctl job and watch it with `list' from
# another connection (functions.sh: jobwatch).
#
#   jobwatch.py --ctl NBDSNAPCTL --socket SOCKET [--kill PID [--kill-at N]]
#               [--out FILE] [--err FILE] delete|rollback NAME -- CMD...
#
# Starts CMD (the job, e.g. nbdsnapctl ... delete B), then runs
# "NBDSNAPCTL -s SOCKET --json list" over and over until CMD exits.  A
# list answer "sees the job" if it shows, for delete, snapshot NAME with
# "state": "deleting" and "progress": {"done", "total"}; for rollback,
# snapshot NAME (the target) with "rollback": {"done", "total"}.  Only
# answers that came while CMD was still running count (CMD is checked
# after the answer has arrived), so each one is an answer given during
# the job.  Every progress figure seen must have 0 <= done <= total.
#
# --kill PID: SIGKILL PID (nbdkit) once an answer sees the job with
# done < total, then stop watching: the first such answer, or with
# --kill-at N the first one with done > 0 or else the Nth.
#
# CMD's stdout and stderr go to the --out and --err files (default
# /dev/null).  Prints one JSON object on stdout:
#
#   {"status": CMD's exit status (or -signal), "lists": answers during the
#    job, "seen": answers that saw it, "deleting": answers that showed
#    NAME deleting (with or without progress), "first": time of the first
#    that saw it, "last": of the last (seconds since the epoch), "done",
#    "total": the last figures seen, "killed": true if PID was killed,
#    "start": when CMD was started, "end": when it was seen to have exited}
#
# A list that fails, or answers something other than a snapshot list,
# exits 1 at once with a message (after killing CMD).
import argparse, json, os, signal, subprocess, sys, time

p = argparse.ArgumentParser(allow_abbrev=False)
p.add_argument("--kill", type=int)
p.add_argument("--kill-at", type=int, default=1)
p.add_argument("--out", default=os.devnull)
p.add_argument("--err", default=os.devnull)
p.add_argument("--ctl", required=True)
p.add_argument("--socket", required=True)
p.add_argument("what", choices=("delete", "rollback"))
p.add_argument("name")
p.add_argument("cmd", nargs=argparse.REMAINDER)
a = p.parse_args()
cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd

r = {"status": None, "lists": 0, "seen": 0, "deleting": 0, "first": None,
     "last": None, "done": None, "total": None, "killed": False,
     "start": time.time(), "end": None}
job = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                       stdout=open(a.out, "wb"), stderr=open(a.err, "wb"))


running = 0                     # answers that saw done < total


def die(msg):
    job.kill()
    job.wait()
    sys.exit("jobwatch.py: " + msg)


while job.poll() is None:
    try:
        out = subprocess.run([a.ctl, "-s", a.socket, "--json", "list"],
                             capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        die("list did not answer within 60 s during the job")
    now = time.time()
    if job.poll() is not None:
        break                   # answered after the job: does not count
    if out.returncode != 0:
        die("list failed during the job (exit %d): %s"
            % (out.returncode, out.stderr.decode(errors="replace")))
    try:
        snaps = json.loads(out.stdout)["snapshots"]
    except (ValueError, KeyError) as e:
        die("list answered %r: %s" % (out.stdout, e))
    r["lists"] += 1
    s = [x for x in snaps if x.get("name") == a.name]
    if not s:
        continue
    s = s[0]
    if s.get("state") == "deleting":
        r["deleting"] += 1
    fig = None
    if a.what == "delete" and s.get("state") == "deleting":
        fig = s.get("progress")
    elif a.what == "rollback":
        fig = s.get("rollback")
    if fig is None:
        continue
    if not (0 <= fig["done"] <= fig["total"]):
        die("%s %s: bad progress figure %r" % (a.what, a.name, fig))
    r["seen"] += 1
    r["first"] = r["first"] or now
    r["last"] = now
    r["done"], r["total"] = fig["done"], fig["total"]
    if fig["done"] < fig["total"]:
        running += 1
    if a.kill is not None and fig["done"] < fig["total"] and \
       (fig["done"] > 0 or running >= a.kill_at):
        os.kill(a.kill, signal.SIGKILL)
        r["killed"] = True
        break

try:
    r["status"] = job.wait(timeout=60)
except subprocess.TimeoutExpired:
    die("the job did not end within 60 s%s"
        % (" of the kill" if r["killed"] else ""))
r["end"] = time.time()
print(json.dumps(r))
