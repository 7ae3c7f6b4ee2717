//! Routers' traffic reports in, window sums out: `POST /v1/routers/{id}/traffic` (a router's
//! cumulative per-arm counters, authenticated like its routing-table acknowledgement) and
//! `GET /v1/traffic` (admin: what the routers counted for one release, for people and tests).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use berth_api::control::{TrafficReport, TrafficWindowView};
use serde::Deserialize;

use super::{AppState, Caller};
use crate::error::ApiError;
use crate::routers;
use crate::traffic::{MAX_REPORT_BYTES, OWN_ARM};

/// Files a router's report. The caller may report only as a router id it may acknowledge
/// tables as ([`routers::check_router_id`]): a node token as `agent-NAME`, the admin token as
/// any short printable id. Answers `{"arms": N}`, the arms whose counts moved.
pub async fn report(
    State(shared): AppState,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<TrafficReport>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    routers::check_router_id(&caller, &id)?;
    let report = match body {
        Ok(Json(report)) => report,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("router {id}: a traffic report is limited to {MAX_REPORT_BYTES} bytes; report fewer arms"),
            ))
        }
        Err(rejection) => {
            return Err(ApiError::invalid(
                format!(
                    "router {id}: malformed traffic report: {}",
                    rejection.body_text()
                ),
                vec![],
            ))
        }
    };
    let now = shared.clock.now_ms();
    let arms = shared
        .traffic
        .record(&id, &report, now)
        .map_err(|e| ApiError::invalid(format!("router {id}: {e}"), vec![]))?;
    Ok(Json(serde_json::json!({ "arms": arms })))
}

/// `?stack=S&service=W[&release=N][&arm=A][&since_ms=T]`.
#[derive(Debug, Deserialize)]
pub struct WindowQuery {
    stack: String,
    service: String,
    /// One release, or every release when absent.
    #[serde(default)]
    release: Option<u64>,
    /// `release` (default) for the route's own releases, or an A/B split service's name.
    #[serde(default)]
    arm: Option<String>,
    /// Counted after this time (server clock, ms); everything kept when absent.
    #[serde(default)]
    since_ms: Option<u64>,
}

/// What every router counted for (stack, service, release) since `since_ms`, up to now.
pub async fn window(
    State(shared): AppState,
    caller: Caller,
    Query(q): Query<WindowQuery>,
) -> Result<Json<TrafficWindowView>, ApiError> {
    caller.require_admin()?;
    let now = shared.clock.now_ms();
    let arm = q.arm.as_deref().unwrap_or(OWN_ARM);
    Ok(Json(shared.traffic.view(
        &q.stack,
        &q.service,
        q.release,
        arm,
        q.since_ms.unwrap_or(0),
        now,
    )))
}
