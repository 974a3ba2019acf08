//! `/v1/batch`: writes to several tables committed atomically (all or none).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use utoipa::ToSchema;

use super::query::KeyRange;
use super::row::{JsonKey, key_from_json};
use super::rows::{WriteResult, add_json_rows, expect_json};
use super::{Json, Query, WriteBody};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::{State as Shared, WriteParams};

/// One write of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Write {
    /// Put rows.
    Put {
        /// The table.
        table: String,
        /// Row objects (`key` and the value columns).
        #[schema(value_type = Vec<Object>)]
        rows: Vec<JsonValue>,
    },
    /// Delete one key.
    Delete {
        /// The table.
        table: String,
        /// The key.
        #[schema(value_type = JsonKey)]
        key: JsonValue,
    },
    /// Delete a key range (`start` inclusive, `end` exclusive).
    DeleteRange {
        /// The table.
        table: String,
        /// The first key.
        #[schema(value_type = Option<JsonKey>)]
        start: Option<JsonValue>,
        /// The end.
        #[schema(value_type = Option<JsonKey>)]
        end: Option<JsonValue>,
    },
}

/// Writes committed together.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteBatch {
    /// The writes, applied in order.
    #[schema(min_items = 1)]
    pub writes: Vec<Write>,
}

/// Commits writes to one or more tables atomically: after a crash either all of them are
/// there or none.
#[utoipa::path(post, path = "/v1/batch", tag = "rows", params(WriteParams),
    request_body = WriteBatch,
    responses(
        (status = 200, description = "Committed", body = WriteResult),
        (status = 400, description = "Bad write", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many writes in flight", body = ErrorBody),
        (status = 503, description = "Not ready or unavailable", body = ErrorBody),
    ))]
pub async fn write_batch(
    State(state): State<Arc<Shared>>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    WriteBody {
        bytes: body,
        permit: _permit,
    }: WriteBody,
) -> ApiResult<Json<WriteResult>> {
    expect_json(&headers)?;
    let request: WriteBatch = super::json_value::parse(&body)
        .map_err(|e| ApiError::bad_input(format!("a batch is {{\"writes\": [...]}}: {e}")))
        .and_then(super::object)?;
    let db = state.db()?;
    let mut batch = db.batch();
    for write in &request.writes {
        match write {
            Write::Put { table, rows } => {
                add_json_rows(&mut batch, &db.table(table)?, rows)?;
            }
            Write::Delete { table, key } => {
                let table = db.table(table)?;
                let key = key_from_json(table.def().key_type, key)?;
                batch.delete(&table, key)?;
            }
            Write::DeleteRange { table, start, end } => {
                let table = db.table(table)?;
                let range = KeyRange {
                    start: start.clone(),
                    end: end.clone(),
                };
                batch.delete_range(&table, range.bounds(table.def().key_type)?)?;
            }
        }
    }
    if batch.is_empty() {
        return Err(ApiError::bad_input("a batch needs at least one write"));
    }
    let lsn = db.write(batch, state.write_options(params)).await?;
    Ok(Json(WriteResult { lsn }))
}
