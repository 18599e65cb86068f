//! `--baseline REV`: an older commit of Hypergate as one more benchmark target.
//!
//! How the baseline binary comes to be:
//! 1. `git rev-parse` resolves the revision (`HEAD~1`, a hash, `main@{1}`, ...)
//!    to a commit in the workspace's repository.
//! 2. `git worktree prune` forgets worktrees whose directories are gone, then the
//!    commit is checked out as a detached worktree at
//!    `<target dir>/bench-baseline/src-<short hash>`. One already there, at that
//!    commit and without local changes, is reused; anything else in its place is
//!    removed first.
//! 3. `cargo build --release -p hypergate --target-dir <target dir>/bench-baseline/target`
//!    builds it there: the main build is untouched, and the baseline's build stays
//!    cached between runs (switching baseline commits rebuilds only what changed).
//! 4. The binary is copied to `<target dir>/bench-baseline/hypergate-<short hash>`,
//!    which the `hypergate-base` target runs and `--no-build` reuses: a later
//!    build of another commit into the shared target directory cannot change it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The directory, under cargo's target directory, of everything the baseline needs.
const BASELINE_SUBDIR: &str = "bench-baseline";

/// How many hex digits of the commit name its worktree, its binary and the report.
const SHORT_HASH_LEN: usize = 12;

/// The baseline commit, built.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The commit's full hash.
    pub commit: String,
    /// Its release `hypergate` binary.
    pub binary: PathBuf,
}

/// The first [`SHORT_HASH_LEN`] hex digits of a commit hash.
pub fn short_hash(commit: &str) -> &str {
    commit.get(..SHORT_HASH_LEN).unwrap_or(commit)
}

/// Where the baseline of `commit` lives under `target_dir`.
#[derive(Debug, PartialEq, Eq)]
struct BaselinePaths {
    /// The detached worktree of the commit.
    source: PathBuf,
    /// The target directory all baseline builds share.
    target: PathBuf,
    /// The copy of the commit's binary that the benchmark runs.
    binary: PathBuf,
}

impl BaselinePaths {
    fn new(target_dir: &Path, commit: &str) -> Self {
        let base = target_dir.join(BASELINE_SUBDIR);
        let short = short_hash(commit);
        Self {
            source: base.join(format!("src-{short}")),
            target: base.join("target"),
            binary: base.join(format!("hypergate-{short}")),
        }
    }
}

/// Resolves `revision` in the repository at `root` and readies its release build
/// (see the module docs); with `build` false, only finds the binary an earlier
/// run built.
pub fn prepare(
    root: &Path,
    target_dir: &Path,
    revision: &str,
    build: bool,
) -> anyhow::Result<Baseline> {
    let commit = resolve(root, revision)?;
    let short = short_hash(&commit);
    let paths = BaselinePaths::new(target_dir, &commit);
    eprintln!("bench: baseline {revision} is commit {short}");
    if !build {
        if paths.binary.is_file() {
            return Ok(Baseline {
                commit,
                binary: paths.binary,
            });
        }
        bail!(
            "{} is missing: the baseline commit {short} has not been built yet; run once \
             without --no-build",
            paths.binary.display()
        );
    }
    check_out(root, &paths.source, &commit)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "bench: cargo build --release -p hypergate --target-dir {} (in {})",
        paths.target.display(),
        paths.source.display()
    );
    let status = Command::new(cargo)
        .current_dir(&paths.source)
        .args(["build", "--release", "-p", "hypergate", "--target-dir"])
        .arg(&paths.target)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!(
            "the baseline commit {short} did not build in release mode (cargo's errors are \
             above; its source is in {})",
            paths.source.display()
        );
    }
    let built = paths.target.join("release").join("hypergate");
    // Copy, then rename: a reader never sees half a binary.
    let partial = paths.binary.with_extension("partial");
    std::fs::copy(&built, &partial)
        .with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
    std::fs::rename(&partial, &paths.binary).with_context(|| {
        format!(
            "renaming {} to {}",
            partial.display(),
            paths.binary.display()
        )
    })?;
    Ok(Baseline {
        commit,
        binary: paths.binary,
    })
}

/// The full hash of the commit `revision` names.
fn resolve(root: &Path, revision: &str) -> anyhow::Result<String> {
    let commit = git(
        root,
        [
            "rev-parse",
            "--verify",
            "--end-of-options",
            &format!("{revision}^{{commit}}"),
        ],
    )
    .with_context(|| format!("--baseline {revision:?} does not name a commit"))?;
    if commit.is_empty() || !commit.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        bail!("git rev-parse printed {commit:?} for --baseline {revision:?}");
    }
    Ok(commit)
}

/// Makes `source` a clean detached worktree of `commit`, reusing one already there.
fn check_out(root: &Path, source: &Path, commit: &str) -> anyhow::Result<()> {
    git(root, ["worktree", "prune"])?;
    if source.exists() {
        if is_clean_worktree_at(source, commit) {
            eprintln!("bench: reusing the baseline worktree {}", source.display());
            return Ok(());
        }
        eprintln!(
            "bench: {} is not a clean worktree at {}; making it again",
            source.display(),
            short_hash(commit)
        );
        // Not a registered worktree (or a broken one): this fails, and the
        // directory goes below.
        let _ = git(
            root,
            [
                OsStr::new("worktree"),
                OsStr::new("remove"),
                OsStr::new("--force"),
                source.as_os_str(),
            ],
        );
        if source.exists() {
            std::fs::remove_dir_all(source)
                .with_context(|| format!("removing {}", source.display()))?;
        }
        git(root, ["worktree", "prune"])?;
    }
    let parent = source.parent().unwrap_or(source);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    eprintln!(
        "bench: git worktree add --detach {} {}",
        source.display(),
        short_hash(commit)
    );
    git(
        root,
        [
            OsStr::new("worktree"),
            OsStr::new("add"),
            OsStr::new("--detach"),
            source.as_os_str(),
            OsStr::new(commit),
        ],
    )?;
    Ok(())
}

/// Whether `dir` is the top of a git worktree whose HEAD is `commit` and whose
/// tracked files are unchanged. (A plain directory inside another checkout
/// would answer for that checkout, hence the top-level check.)
fn is_clean_worktree_at(dir: &Path, commit: &str) -> bool {
    let Ok(answer) = git(dir, ["rev-parse", "--show-toplevel", "HEAD"]) else {
        return false;
    };
    let mut lines = answer.lines();
    let (Some(top), Some(head)) = (lines.next(), lines.next()) else {
        return false;
    };
    let same_dir = match (Path::new(top).canonicalize(), dir.canonicalize()) {
        (Ok(top), Ok(dir)) => top == dir,
        _ => false,
    };
    same_dir
        && head == commit
        && git(dir, ["status", "--porcelain", "--untracked-files=no"])
            .is_ok_and(|changes| changes.is_empty())
}

/// Runs git in `dir` and returns its trimmed standard output; fails with its
/// standard error when it fails.
fn git<I, S>(dir: &Path, args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<String> = args
        .iter()
        .map(|arg| arg.as_ref().to_string_lossy().into_owned())
        .collect();
    let output = Command::new("git")
        .current_dir(dir)
        .args(&args)
        .output()
        .context("running git")?;
    if !output.status.success() {
        bail!(
            "`git {}` in {} failed ({}): {}",
            shown.join(" "),
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_sit_under_the_target_dir_and_name_the_commit() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(short_hash(commit), "0123456789ab");
        assert_eq!(short_hash("abc"), "abc");
        assert_eq!(
            BaselinePaths::new(Path::new("/t"), commit),
            BaselinePaths {
                source: PathBuf::from("/t/bench-baseline/src-0123456789ab"),
                target: PathBuf::from("/t/bench-baseline/target"),
                binary: PathBuf::from("/t/bench-baseline/hypergate-0123456789ab"),
            }
        );
    }

    #[test]
    fn revisions_resolve_to_full_hashes_or_fail() {
        let root = crate::bench::workspace_root();
        let head = resolve(&root, "HEAD").expect("HEAD resolves");
        assert!(head.len() >= 40, "{head}");
        assert_eq!(
            resolve(&root, &head[..12]).expect("a short hash resolves"),
            head
        );
        assert!(resolve(&root, "no-such-revision-anywhere").is_err());
        // An option is not a revision.
        assert!(resolve(&root, "--all").is_err());
    }
}
