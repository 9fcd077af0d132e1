//! The order of the runs: per K and size, every method once per repetition, the order rotated
//! per repetition; plus the 0 MiB calibration the 1024 MiB total target needs when the sizes
//! asked for have no 0.

use crate::record::CONTAINER_LEVEL;
use crate::report::{FIXED_COST_MIB, TARGET_K, TOTAL_TARGET_MIB};

/// One migration to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub procs: u64,
    pub size_mib: u64,
    pub rep: u32,
    pub method: String,
}

/// The methods to run at 0 MiB besides the sizes asked for: issue 4's 1024 MiB target compares
/// the total with (bytes / raw link + the 0 MiB run's total) of the same method, so without a
/// 0 MiB size each container-level UMS method asked for is calibrated there. Only where the
/// target is computed: unshaped, K = 1 among the process counts.
pub fn calibration(sizes: &[u64], procs: &[u64], methods: &[String], shaped: bool) -> Vec<String> {
    if shaped
        || !sizes.contains(&TOTAL_TARGET_MIB)
        || sizes.contains(&FIXED_COST_MIB)
        || !procs.contains(&TARGET_K)
    {
        return Vec::new();
    }
    methods
        .iter()
        .filter(|m| CONTAINER_LEVEL.contains(&m.as_str()))
        .cloned()
        .collect()
}

fn block(steps: &mut Vec<Step>, procs: u64, size_mib: u64, reps: u32, methods: &[String]) {
    let k = methods.len();
    for rep in 0..reps {
        for j in 0..k {
            steps.push(Step {
                procs,
                size_mib,
                rep,
                method: methods[(j + rep as usize) % k].clone(),
            });
        }
    }
}

/// Every run in order: for each K, the calibration (at K = 1, before the sizes), then each size.
pub fn plan(
    sizes: &[u64],
    procs: &[u64],
    reps: u32,
    methods: &[String],
    calibrate: &[String],
) -> Vec<Step> {
    let mut steps = Vec::new();
    for &p in procs {
        if p == TARGET_K && !calibrate.is_empty() {
            block(&mut steps, p, FIXED_COST_MIB, reps, calibrate);
        }
        for &z in sizes {
            block(&mut steps, p, z, reps, methods);
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn calibration_only_where_the_total_target_needs_it() {
        let all = v(&[
            "ums",
            "ums-postcopy",
            "orchestrator",
            "stop-and-copy",
            "page-server",
        ]);
        assert_eq!(
            calibration(&[128, 1024], &[1], &all, false),
            v(&["ums", "ums-postcopy"])
        );
        // 0 MiB asked for: nothing extra
        assert!(calibration(&[0, 128, 1024], &[1], &all, false).is_empty());
        // no 1024 MiB, shaped, or no K = 1: the target is not computed
        assert!(calibration(&[128], &[1], &all, false).is_empty());
        assert!(calibration(&[128, 1024], &[1], &all, true).is_empty());
        assert!(calibration(&[1024], &[2, 4], &all, false).is_empty());
        // no container-level UMS method asked for
        assert!(calibration(&[1024], &[1], &v(&["page-server"]), false).is_empty());
        assert_eq!(
            calibration(&[1024], &[1, 2], &v(&["page-server", "ums"]), false),
            v(&["ums"])
        );
    }

    #[test]
    fn the_issues_command_gets_a_0_mib_block_first() {
        let methods = v(&["ums", "ums-postcopy", "stop-and-copy", "page-server"]);
        let cal = calibration(&[128, 1024], &[1], &methods, false);
        let p = plan(&[128, 1024], &[1], 5, &methods, &cal);
        assert_eq!(p.len(), 2 * 5 + 2 * 5 * 4);
        let zero: Vec<&Step> = p.iter().filter(|s| s.size_mib == 0).collect();
        assert_eq!(zero.len(), 10);
        assert!(p[..10].iter().all(|s| s.size_mib == 0 && s.procs == 1));
        for m in ["ums", "ums-postcopy"] {
            let reps: Vec<u32> = zero
                .iter()
                .filter(|s| s.method == m)
                .map(|s| s.rep)
                .collect();
            assert_eq!(reps, vec![0, 1, 2, 3, 4]);
        }
        // the order rotates per repetition
        assert_eq!(
            (p[0].method.as_str(), p[2].method.as_str()),
            ("ums", "ums-postcopy")
        );
        assert_eq!(p[10].method, "ums");
        assert_eq!(p[14].method, "ums-postcopy");
        assert_eq!(p[14].rep, 1);
    }

    #[test]
    fn several_k_each_size_and_method() {
        let methods = v(&["ums", "page-server"]);
        let p = plan(&[0, 128], &[1, 2, 4, 8], 2, &methods, &[]);
        assert_eq!(p.len(), 4 * 2 * 2 * 2);
        for k in [1, 2, 4, 8] {
            for z in [0, 128] {
                for m in ["ums", "page-server"] {
                    let n = p
                        .iter()
                        .filter(|s| s.procs == k && s.size_mib == z && s.method == m)
                        .count();
                    assert_eq!(n, 2, "K={k} {z} MiB {m}");
                }
            }
        }
    }
}
