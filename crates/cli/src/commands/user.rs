//! `berth user add|list|rm` and `berth token rotate`: named users with a role, and their tokens.
//!
//! A token is printed once, alone on stdout (so `TOKEN=$(berth user add …)` captures it), with
//! what to do with it on stderr; the server keeps only its SHA-256.

use berth_api::identity::{Role, UserAdd, UserToken};

use crate::context::{client_error, print_json, runtime, Globals};

/// `berth user …`
#[derive(clap::Subcommand, Debug)]
pub enum User {
    /// Add a user and print its token, once.
    Add {
        /// `[a-z][a-z0-9-]*`: `who` in releases, events and the audit log.
        name: String,
        /// viewer (reads; never secret values), deployer (plans, deploys, rolls back, scales,
        /// maintenance), approver (approves), admin (everything).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Limit the user to this stack (repeat for more; default: every stack).
        #[arg(long = "stack", value_name = "STACK")]
        stacks: Vec<String>,
        /// Limit the user to this environment (repeat for more; default: every environment).
        #[arg(long = "env", value_name = "ENV")]
        envs: Vec<String>,
    },
    /// Every user: name, role, scopes (never a token).
    List,
    /// Remove a user: its token stops working at once.
    Rm {
        /// The user to remove (their token stops working at once).
        name: String,
    },
}

/// `berth token …`
#[derive(clap::Subcommand, Debug)]
pub enum Token {
    /// Replace the calling user's token (--token / BERTH_TOKEN) with a new one, printed once;
    /// the old one stops working at once.
    Rotate,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| format!("`{s}` is not a role: use viewer, deployer, approver or admin"))
}

fn print_token(t: &UserToken, what: &str, globals: &Globals) -> anyhow::Result<()> {
    if globals.json() {
        return print_json(t);
    }
    println!("{}", t.token);
    eprintln!(
        "{what} {} (role {}{}{}): the token above is shown only this once; berth keeps only its hash. Use it as --token or BERTH_TOKEN.",
        t.user.name,
        t.user.role,
        scope("stacks", &t.user.stacks),
        scope("envs", &t.user.envs),
    );
    Ok(())
}

fn scope(what: &str, v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else {
        format!(", {what} {}", v.join(","))
    }
}

/// Runs one `berth user` command.
pub fn run(which: User, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        match which {
            User::Add {
                name,
                role,
                stacks,
                envs,
            } => {
                let t = client
                    .add_user(&UserAdd {
                        name,
                        role,
                        stacks,
                        envs,
                    })
                    .await
                    .map_err(client_error)?;
                print_token(&t, "user added:", globals)
            }
            User::List => {
                let users = client.users().await.map_err(client_error)?;
                if globals.json() {
                    return print_json(&users);
                }
                if users.is_empty() {
                    println!("no users besides the admin token's (`admin`): add one with `berth user add NAME --role viewer|deployer|approver|admin`");
                    return Ok(());
                }
                let width = users.iter().map(|u| u.name.len()).max().unwrap_or(4).max(4);
                println!("{:width$}  {:<8}  {:<20}  {:<20}  CREATED", "NAME", "ROLE", "STACKS", "ENVS");
                for u in &users {
                    let or_all = |v: &[String]| if v.is_empty() { "*".to_string() } else { v.join(",") };
                    println!(
                        "{:width$}  {:<8}  {:<20}  {:<20}  {}",
                        u.name,
                        u.role,
                        or_all(&u.stacks),
                        or_all(&u.envs),
                        super::clock_time::format_time(u.created_ms)
                    );
                }
                Ok(())
            }
            User::Rm { name } => {
                client.remove_user(&name).await.map_err(client_error)?;
                if globals.json() {
                    return print_json(&serde_json::json!({ "name": name, "removed": true }));
                }
                println!("user {name} removed: its token no longer works");
                Ok(())
            }
        }
    })
}

/// Runs one `berth token` command.
pub fn run_token(which: Token, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    match which {
        Token::Rotate => runtime()?.block_on(async {
            let t = client.rotate_token().await.map_err(client_error)?;
            print_token(&t, "new token for", globals)
        }),
    }
}
