//! `berth history`: the releases of a stack in an environment.

use crate::context::{client_error, print_json, runtime, Globals};

/// Arguments of `berth history`.
#[derive(clap::Args, Debug)]
pub struct Args {
    stack: String,
    #[arg(long)]
    env: String,
}

/// `berth history`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let releases = client.releases(&args.stack, &args.env).await.map_err(client_error)?;
        if globals.json() {
            let light: Vec<serde_json::Value> = releases
                .iter()
                .map(|r| serde_json::json!({"number": r.number, "created_ms": r.created_ms, "who": r.who, "status": r.status, "summary": r.summary, "plan_id": r.plan_id, "rollback_of": r.rollback_of, "reason": r.reason}))
                .collect();
            return print_json(&light);
        }
        println!("{:<8} {:<20} {:<8} {:<12} SUMMARY", "RELEASE", "CREATED (UTC)", "WHO", "STATUS");
        for r in &releases {
            let status = format!("{:?}", r.status).to_lowercase();
            let mut summary = r.summary.clone();
            if let Some(reason) = &r.reason {
                summary.push_str(&format!(" [{reason}]"));
            }
            println!("{:<8} {:<20} {:<8} {:<12} {}", r.number, format_time(r.created_ms), r.who, status, summary);
        }
        Ok(())
    })
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, without a date crate (civil-from-days, Howard Hinnant).
pub(crate) fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
