//! How much cfstrace says besides its output, errors and warnings: `-q` silences its own
//! informational stderr lines (progress, "wrote ...", "serving ...", the demo's chatter), `-v`
//! adds detail (the probe list's reasons in full). Errors and warnings are always printed.
//!
//! Chosen once in `main` and read where it is needed (a `OnceLock`, not a value passed down):
//! the lines it governs sit in every command and in the report's renderer, behind signatures
//! (`print_report`, `render_text`, `record`) that other work shares; one read-only value set
//! before anything runs keeps those alone. Pure pieces take a [`Verbosity`] so tests can choose.
use std::fmt;
use std::io::{self, Write};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors, warnings and the output itself only.
    Quiet,
    #[default]
    Normal,
    /// `-v`: more detail where there is more to say.
    Verbose,
}

impl Verbosity {
    /// The global `-q` / `-v` flags (clap makes them exclusive).
    pub fn from_flags(quiet: bool, verbose: u8) -> Self {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, _) => Verbosity::Verbose,
        }
    }

    /// Informational stderr lines are shown.
    pub fn info(self) -> bool {
        self >= Verbosity::Normal
    }

    /// The long forms are shown.
    pub fn detail(self) -> bool {
        self >= Verbosity::Verbose
    }
}

static LEVEL: OnceLock<Verbosity> = OnceLock::new();

/// Set once, by `main`, before any command runs; later calls are ignored.
pub fn set(v: Verbosity) {
    let _ = LEVEL.set(v);
}

/// The verbosity in force (`Normal` when `main` set none, as in unit tests).
pub fn get() -> Verbosity {
    LEVEL.get().copied().unwrap_or_default()
}

/// An informational line on stderr, unless `-q`. A closed or full stderr is not an error
/// worth dying for (eprintln! would panic).
pub fn info(args: fmt::Arguments<'_>) {
    say(&mut io::stderr().lock(), get(), args);
}

/// [`info`] to any writer at a chosen verbosity.
pub fn say(w: &mut impl Write, v: Verbosity, args: fmt::Arguments<'_>) {
    if v.info() {
        // Lines that name cgroups, files and commands: escaped for the terminal.
        let text = args.to_string();
        let _ = writeln!(w, "{}", crate::model::escape::terminal_lines(&text));
    }
}

/// `info!("cfstrace: wrote {}", path)`: an informational stderr line, silenced by `-q`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        $crate::verbosity::info(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_levels() {
        assert_eq!(Verbosity::from_flags(false, 0), Verbosity::Normal);
        assert_eq!(Verbosity::from_flags(true, 0), Verbosity::Quiet);
        assert_eq!(Verbosity::from_flags(false, 2), Verbosity::Verbose);
        assert!(!Verbosity::Quiet.info() && Verbosity::Normal.info());
        assert!(!Verbosity::Normal.detail() && Verbosity::Verbose.detail());
    }

    #[test]
    fn quiet_silences_info_lines() {
        let line = |v| {
            let mut w = Vec::new();
            say(&mut w, v, format_args!("cfstrace: wrote {}", "x.svg"));
            String::from_utf8(w).unwrap()
        };
        assert_eq!(line(Verbosity::Quiet), "");
        assert_eq!(line(Verbosity::Normal), "cfstrace: wrote x.svg\n");
        assert_eq!(line(Verbosity::Verbose), "cfstrace: wrote x.svg\n");
    }
}
