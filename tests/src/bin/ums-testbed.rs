//! ums-testbed: the Rust side of `hack/testbed.sh` (config generation, readiness, teardown, a CRI
//! smoke pod), over `ums_tests::testbed`. Run by the script; usable by hand.

use std::path::PathBuf;
use std::time::Duration;

use ums_tests::testbed::{self, System};

const USAGE: &str = "\
usage: ums-testbed COMMAND [options]

Per system (--dir /run/ums-testbed/<sys> --version 1.6|2.1 [--name <sys>]):
  config  --network NAME --bridge NAME --subnet CIDR
                        write <dir>/config.toml (CRI handler `ums`, restrict_oom_score_adj,
                        sandbox image localhost/ums/pause:1) and the CNI bridge conflist
  ready   [--timeout S] wait until containerd answers, its plugins loaded and CRI is ready
  clean                 remove CRI pods, then kill and delete every task and container in
                        every namespace (graceful teardown, containerd must be running)
  cri-pod [--handler ums] [--image REF] [--pod NAME] [--cgroup-parent P] [--keep]
                        run a CRI pod with the handler and a container of the image (default
                        localhost/ums/counter:1; cgroup parent default /ums-testbed-<sys>),
                        check it runs, exec into it, remove it
Whole test bed:
  sweep   --base DIR [--netns NAME]... [--cgroup PATH]...
                        kill every process of the test bed (argv naming a path under DIR,
                        rooted under DIR, in the netns, in a container cgroup or in an owned
                        cgroup tree PATH, and their descendants), unmount everything under
                        DIR, remove those cgroups (and empty parents) and the shim sockets";

fn die(msg: &str) -> ! {
    eprintln!("ums-testbed: {msg}");
    std::process::exit(2)
}

struct Args(Vec<(String, Option<String>)>);

impl Args {
    fn parse(v: Vec<String>) -> Args {
        let mut out = Vec::new();
        let mut it = v.into_iter().peekable();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                die(&format!("unexpected argument `{a}`\n{USAGE}"));
            };
            if let Some((k, v)) = name.split_once('=') {
                out.push((k.into(), Some(v.into())));
            } else {
                let v = match it.peek() {
                    Some(n) if !n.starts_with("--") => it.next(),
                    _ => None,
                };
                out.push((name.into(), v));
            }
        }
        Args(out)
    }

    fn get(&self, k: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.clone())
    }

    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    fn has(&self, k: &str) -> bool {
        self.0.iter().any(|(n, _)| n == k)
    }

    fn need(&self, k: &str) -> String {
        self.get(k)
            .unwrap_or_else(|| die(&format!("--{k} is required")))
    }

    fn system(&self) -> System {
        let dir = PathBuf::from(self.need("dir"));
        let version = testbed::parse_version(&self.need("version"))
            .unwrap_or_else(|| die("--version: 1.6 or 2.1"));
        let name = self.get("name").unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        System::new(&name, version, &dir, "")
    }
}

fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv[0] == "-h" || argv[0] == "--help" {
        println!("{USAGE}");
        return;
    }
    let cmd = argv.remove(0);
    let a = Args::parse(argv);
    match cmd.as_str() {
        "config" => {
            let s = a.system();
            s.write_config(&a.need("network"), &a.need("bridge"), &a.need("subnet"))
                .unwrap_or_else(|e| {
                    die(&format!("writing the config in {}: {e}", s.dir.display()))
                });
        }
        "ready" => {
            let s = a.system();
            let t: u64 = a.get("timeout").and_then(|t| t.parse().ok()).unwrap_or(60);
            if let Err(e) = s.wait_ready(Duration::from_secs(t)) {
                die(&format!("system {}: {e}", s.name));
            }
        }
        "clean" => {
            let s = a.system();
            for line in s.remove_everything() {
                println!("{}: {line}", s.name);
            }
        }
        "cri-pod" => {
            let s = a.system();
            let handler = a.get("handler").unwrap_or_else(|| "ums".into());
            let image = a
                .get("image")
                .unwrap_or_else(|| testbed::COUNTER_IMAGE.into());
            let pod = a.get("pod").unwrap_or_else(|| format!("smoke-{}", s.name));
            let parent = a
                .get("cgroup-parent")
                .unwrap_or_else(|| format!("/ums-testbed-{}", s.name));
            match s.cri_pod(&pod, &handler, &image, &parent, a.has("keep")) {
                Ok(msg) => println!("{}: {msg}", s.name),
                Err(e) => die(&format!("system {}: CRI pod failed: {e}", s.name)),
            }
        }
        "sweep" => {
            let base = PathBuf::from(a.need("base"));
            let r = testbed::sweep(&base, &a.all("netns"), &a.all("cgroup"));
            println!("sweep {}: {r}", base.display());
            if !r.problems.is_empty() {
                std::process::exit(1);
            }
        }
        _ => die(&format!("unknown command `{cmd}`\n{USAGE}")),
    }
}
