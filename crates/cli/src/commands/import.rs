//! `berth import compose [-f FILE]… [--stack NAME] [--env NAME] [--image SERVICE=REF]…
//! [--strict]`: the shell around `berth-compose`. It reads the files, `.env` and the environment,
//! writes the stack file to stdout and every warning, note and error on stderr as
//! `FILE:LINE:COL: …`; exit 1 on an error (or a warning under `--strict`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_compose::{ComposeFile, Options, Vars};

use crate::context::{Globals, Output};
use crate::exit::{Silent, FAILURE};

use super::source;

/// `berth import …`.
#[derive(clap::Subcommand, Debug)]
pub enum Import {
    /// Write a stack file for a Compose project to stdout; warn about what berth cannot map.
    Compose(Args),
}

/// Arguments of `berth import compose`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Compose files, merged in order as `docker compose -f` merges them (default: compose.yaml,
    /// compose.yml, docker-compose.yaml or docker-compose.yml in the current directory).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The stack's name (default: the Compose `name:`, else the project directory's name).
    #[arg(long)]
    stack: Option<String>,
    /// The environment written (with one region, `local`).
    #[arg(long, default_value = "local")]
    env: String,
    /// The image for a service Compose builds: `--image web=registry/web:1.4` (repeatable).
    #[arg(long = "image", value_name = "SERVICE=REF")]
    images: Vec<String>,
    /// Treat every warning as an error: no stack is written if anything is left out.
    #[arg(long)]
    strict: bool,
}

/// Dispatches `berth import …`.
pub fn run(which: Import, g: &Globals) -> anyhow::Result<()> {
    match which {
        Import::Compose(args) => compose(args, g.output),
    }
}

/// The files `docker compose` reads without `-f`, in its order of preference.
const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// The override file `docker compose` merges over the default file when there is no `-f`
/// (the first of these that exists), so an import without `-f` sees what `docker compose up`
/// runs.
const OVERRIDE_FILES: &[&str] = &[
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

fn compose(args: Args, output: Output) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let files = if args.files.is_empty() {
        let found = DEFAULT_FILES.iter().find(|f| cwd.join(f).is_file());
        let Some(base) = found else {
            anyhow::bail!(
                "no compose.yaml or docker-compose.yml in {}: pass the files with -f",
                cwd.display()
            );
        };
        let mut files = vec![PathBuf::from(base)];
        if let Some(o) = OVERRIDE_FILES.iter().find(|f| cwd.join(f).is_file()) {
            eprintln!("note: {o} is merged over {base}, as docker compose does without -f (pass -f {base} to leave it out)");
            files.push(PathBuf::from(o));
        }
        files
    } else {
        args.files.clone()
    };
    // The project directory is the first file's, as in Compose.
    let first = files
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new("."));
    let project_dir = absolute(&cwd, first.parent().unwrap_or(Path::new("")));
    let mut inputs = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        let bytes = source::read(&name)?;
        inputs.push(ComposeFile { name, bytes });
    }
    let vars = variables(&project_dir)?;
    let mut images = BTreeMap::new();
    for i in &args.images {
        let (s, r) = i
            .split_once('=')
            .with_context(|| format!("--image {i}: expected SERVICE=REF"))?;
        images.insert(s.to_string(), r.to_string());
    }
    let options = Options {
        stack: args.stack.clone(),
        env: args.env.clone(),
        images,
        project_dir: project_dir.display().to_string(),
        project_name: project_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "stack".to_string()),
        strict: args.strict,
    };
    let dir = project_dir.clone();
    let read = move |p: &str| -> Result<String, String> {
        let path = dir.join(p);
        let bytes = source::read(&path.display().to_string()).map_err(|e| format!("{e:#}"))?;
        String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))
    };
    let outcome = berth_compose::import(&inputs, &vars, &options, &read);
    let warn_kind = if args.strict { "error" } else { "warning" };
    for e in &outcome.report.errors {
        eprintln!("{}", outcome.display("error", e));
    }
    for w in &outcome.report.warnings {
        eprintln!("{}", outcome.display(warn_kind, w));
    }
    if output == Output::Text {
        for n in &outcome.report.notes {
            eprintln!("{}", outcome.display("note", n));
        }
    }
    match (&outcome.stack, output) {
        (Some(_), Output::Json) | (None, Output::Json) => {
            println!("{}", serde_json::to_string_pretty(&outcome.to_json())?);
        }
        (Some(s), Output::Text) => print!("{s}"),
        (None, Output::Text) => {}
    }
    if outcome.stack.is_none() {
        if args.strict && outcome.report.errors.is_empty() {
            eprintln!(
                "--strict: {} warning(s) are errors; no stack written",
                outcome.report.warnings.len()
            );
        }
        return Err(Silent(FAILURE).into());
    }
    Ok(())
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// `.env` in the project directory, overridden by the environment, as Compose reads them.
fn variables(project_dir: &Path) -> anyhow::Result<Vars> {
    let mut vars = Vars::new();
    let path = project_dir.join(".env");
    if path.is_file() {
        let name = path.display().to_string();
        let bytes = source::read(&name)?;
        let text = String::from_utf8(bytes).with_context(|| format!("{name}: not UTF-8"))?;
        let lines = berth_compose::dotenv::parse(&text)
            .map_err(|(pos, e)| anyhow::anyhow!("{name}:{}:{}: {e}", pos.line, pos.col))?;
        for l in lines {
            vars.insert(l.key, l.value);
        }
    }
    for (k, v) in std::env::vars_os() {
        if let (Some(k), Some(v)) = (k.to_str(), v.to_str()) {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    Ok(vars)
}
