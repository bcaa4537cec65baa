//! Man pages and shell completions for the `bits` and `bitsd` commands, generated from their
//! clap definitions so that neither can drift from `--help`. Both binaries expose them as
//! `completions SHELL` (to standard output) and a hidden `manpages DIR`; `scripts/deb.sh`
//! writes them for the Debian packages.

use std::io::Write;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Writes `NAME.SECTION` for `cmd` and `NAME-SUB.SECTION` for each visible subcommand, nested
/// (`bitsd-sessions-list.8`), into `dir` (created if missing); returns the files written.
pub fn write_man_pages(
    cmd: clap::Command,
    section: &str,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    // `help` is a clap artefact, not a command worth a page.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_page(&cmd, section, dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    section: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    // Both commands share the workspace's version: the project's, as the footer shows it.
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .source(format!("bitsd {}", env!("CARGO_PKG_VERSION")))
        .manual("bitsd");
    written.push(man.generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, section, dir, written)?;
    }
    Ok(())
}

/// The completion script of `shell` for `cmd`, as the command `name`.
pub fn write_completions(
    mut cmd: clap::Command,
    name: &str,
    shell: Shell,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    out.write_all(&buf)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    #[command(name = "demo", version, about = "A demo")]
    struct Demo {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        /// Do one thing.
        One {
            #[arg(long)]
            flag: bool,
        },
        #[command(hide = true)]
        Secret,
    }

    #[test]
    fn pages_for_the_command_and_its_visible_subcommands() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<String> = write_man_pages(Demo::command(), "8", dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["demo-one.8", "demo.8"]);
        let page = std::fs::read_to_string(dir.path().join("demo-one.8")).unwrap();
        assert!(page.contains(".TH demo-one 8"), "{page}");
        assert!(page.contains("flag"), "{page}");
        let mut bash = Vec::new();
        write_completions(Demo::command(), "demo", Shell::Bash, &mut bash).unwrap();
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("complete -F _demo"), "{bash}");
    }
}
