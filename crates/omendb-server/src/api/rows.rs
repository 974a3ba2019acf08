//! Writes and point reads: put rows (JSON or Arrow IPC), get, multi-get, delete, delete-range.

use std::io::Cursor;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use arrow_schema::DataType;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use omendb_core::{Batch, Table};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use utoipa::ToSchema;

use super::query::{KeyRange, SlowRead};
use super::row::{
    JsonKey, JsonRow, key_from_json, key_from_text, key_to_json, row_from_json, row_to_json,
};
use super::{ARROW_STREAM, Json, Path, Query, WriteBody};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::{State as Shared, WriteParams};

/// Keys a multi-get reads from the engine at a time (one batched lookup each): bounds the rows
/// held before their JSON is counted against `limits.max_response_bytes`.
const MULTI_GET_CHUNK: usize = 128;

/// The outcome of a write.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WriteResult {
    /// The log sequence number the write committed at (reads at or after it see it).
    pub lsn: u64,
}

/// Keys to read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiGet {
    /// The keys (integers of the table's key type), at most `limits.max_keys`.
    #[schema(value_type = Vec<JsonKey>)]
    pub keys: Vec<JsonValue>,
}

/// The rows at the keys asked for, in order; `null` where a key has no row.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MultiGetResult {
    /// One entry per key asked for.
    #[schema(value_type = Vec<Option<Object>>)]
    pub rows: Vec<Option<JsonRow>>,
}

/// What a request's `Content-Type` says its body is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Media {
    /// No `Content-Type`: taken as JSON.
    Unsaid,
    /// `application/json` or `application/*+json`, parameters aside, in any case (as the
    /// routes that take `Json` read it).
    Json,
    /// An Arrow IPC stream.
    Arrow,
    /// Anything else, as given.
    Other(String),
}

/// The media type of a request's body. Compared by prefix and case-sensitively, `Application/JSON`
/// was refused on puts and batches while every other route took it, and `application/jsonl`
/// passed as JSON.
fn media(headers: &HeaderMap) -> Media {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Media::Unsaid;
    };
    let Ok(text) = value.to_str() else {
        return Media::Other(String::from_utf8_lossy(value.as_bytes()).into_owned());
    };
    media_of(text)
}

/// What the media type `text` (parameters aside, in any case) is: also read for each range of
/// an `Accept` header.
pub(super) fn media_of(text: &str) -> Media {
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) if subtype == "json" || subtype.ends_with("+json") => {
            Media::Json
        }
        _ if essence == ARROW_STREAM => Media::Arrow,
        _ => Media::Other(text.to_owned()),
    }
}

/// Refuses a body whose `Content-Type` is given and is not JSON (415); a body without one is
/// taken as JSON, as a put's is (the routes that take `Json` need the header).
pub fn expect_json(headers: &HeaderMap) -> ApiResult<()> {
    match media(headers) {
        Media::Unsaid | Media::Json => Ok(()),
        Media::Arrow => Err(unsupported(format!(
            "the body is application/json, not {ARROW_STREAM:?}"
        ))),
        Media::Other(content_type) => Err(unsupported(format!(
            "the body is application/json, not {content_type:?}"
        ))),
    }
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        message,
    )
}

/// Adds the rows of a put body to `batch`: a JSON array of rows, or an Arrow IPC stream when
/// the content type says so.
pub fn add_put_body(
    batch: &mut Batch,
    table: &Table,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<usize> {
    let kind = media(headers);
    if kind == Media::Arrow {
        let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(body), None)
            .map_err(|e| ApiError::bad_input(format!("not an Arrow IPC stream: {e}")))?;
        if let Some(field) = reader
            .schema()
            .fields()
            .iter()
            .find(|field| has_dictionary(field.data_type()))
        {
            return Err(ApiError::bad_input(format!(
                "column {:?} is dictionary-encoded ({}); no table column is, send its values",
                field.name(),
                field.data_type()
            )));
        }
        let mut rows = 0;
        for rb in reader {
            let rb = rb.map_err(|e| ApiError::bad_input(format!("Arrow IPC stream: {e}")))?;
            rows += rb.num_rows();
            batch.put_batch(table, &rb)?;
        }
        return Ok(rows);
    }
    if let Media::Other(content_type) = kind {
        return Err(unsupported(format!(
            "a put body is application/json or {ARROW_STREAM}, not {content_type}"
        )));
    }
    let rows = match super::json_value::parse(body) {
        Ok(JsonValue::Array(rows)) => rows,
        Ok(_) => {
            return Err(ApiError::bad_input("a put body is a JSON array of rows"));
        }
        Err(e) => {
            return Err(ApiError::bad_input(format!(
                "a put body is a JSON array of rows: {e}"
            )));
        }
    };
    add_json_rows(batch, table, &rows)
}

/// Whether `data_type` holds a dictionary anywhere. No table column does, and a stream's
/// reader decodes every dictionary message before the batch after it, on the request's thread:
/// thousands of small delta messages each copied the whole dictionary again (minutes of CPU
/// from a body under the size limit, which no timeout could stop; found by a helper agent's
/// review). Without a dictionary in the schema, the reader refuses any dictionary message.
fn has_dictionary(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(..) => true,
        DataType::List(field)
        | DataType::LargeList(field)
        | DataType::ListView(field)
        | DataType::LargeListView(field)
        | DataType::FixedSizeList(field, _)
        | DataType::Map(field, _) => has_dictionary(field.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(ends, values) => {
            has_dictionary(ends.data_type()) || has_dictionary(values.data_type())
        }
        _ => false,
    }
}

/// Adds JSON rows to `batch`.
pub fn add_json_rows(batch: &mut Batch, table: &Table, rows: &[JsonValue]) -> ApiResult<usize> {
    for row in rows {
        let (key, values) = row_from_json(table.def(), row)?;
        batch.put(table, key, &values)?;
    }
    Ok(rows.len())
}

/// Puts rows, atomically: a JSON array of row objects, or an Arrow IPC stream
/// (`Content-Type: application/vnd.apache.arrow.stream`) with a `key` column and value columns.
#[utoipa::path(post, path = "/v1/tables/{table}/rows", tag = "rows",
    params(("table" = String, Path, description = "The table"), WriteParams),
    request_body(description = "Rows", content(
        (Vec<Object> = "application/json"),
        (Vec<u8> = "application/vnd.apache.arrow.stream"),
    )),
    responses(
        (status = 200, description = "Committed", body = WriteResult),
        (status = 400, description = "Bad rows", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 415, description = "Unsupported content type", body = ErrorBody),
        (status = 429, description = "Too many writes in flight", body = ErrorBody),
        (status = 503, description = "Not ready or unavailable", body = ErrorBody),
    ))]
pub async fn put_rows(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    WriteBody {
        bytes: body,
        permit: _permit,
    }: WriteBody,
) -> ApiResult<Json<WriteResult>> {
    let db = state.db()?;
    let table = db.table(&table)?;
    let mut batch = db.batch();
    let rows = add_put_body(&mut batch, &table, &headers, &body)?;
    if rows == 0 {
        return Err(ApiError::bad_input("a put needs at least one row"));
    }
    let lsn = db.write(batch, state.write_options(params)).await?;
    Ok(Json(WriteResult { lsn }))
}

/// Reads the row at a key.
#[utoipa::path(get, path = "/v1/tables/{table}/rows/{key}", tag = "rows",
    params(
        ("table" = String, Path, description = "The table"),
        ("key" = JsonKey, Path, description = "The key (an integer of the table's key type)"),
    ),
    responses(
        (status = 200, description = "The row", body = Object),
        (status = 400, description = "Bad key", body = ErrorBody),
        (status = 404, description = "No such table or key", body = ErrorBody),
        (status = 429, description = "Too many queries", body = ErrorBody),
        (status = 503, description = "Not ready or unavailable", body = ErrorBody),
    ))]
pub async fn get_row(
    State(state): State<Arc<Shared>>,
    Path((table, key)): Path<(String, String)>,
) -> ApiResult<Json<JsonRow>> {
    let _permit = state.query_permit()?;
    let started = Instant::now();
    let table = state.table(&table)?;
    let key = key_from_text(table.def().key_type, &key)?;
    let mut slow = SlowRead::new(
        &state,
        "/v1/tables/{table}/rows/{key}",
        table,
        Some((Bound::Included(key), Bound::Included(key))),
        started,
    );
    let row = slow.table().get(key).await.map_err(ApiError::from);
    let row = slow.check(row)?;
    slow.finished(u64::from(row.is_some()));
    let values =
        row.ok_or_else(|| ApiError::not_found(format!("no row at key {}", key_to_json(key))))?;
    Ok(Json(row_to_json(slow.table().def(), key, &values)))
}

/// Reads the rows at many keys, at one snapshot.
#[utoipa::path(post, path = "/v1/tables/{table}/multi-get", tag = "rows",
    params(("table" = String, Path, description = "The table")),
    request_body = MultiGet,
    responses(
        (status = 200, description = "The rows, in the order of the keys", body = MultiGetResult),
        (status = 400, description = "Bad keys", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 413, description = "Too many keys, body too large, or rows past limits.max_response_bytes", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many queries", body = ErrorBody),
        (status = 503, description = "Not ready or unavailable", body = ErrorBody),
    ))]
pub async fn multi_get(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
    Json(request): Json<MultiGet>,
) -> ApiResult<Response> {
    let _permit = state.query_permit()?;
    let started = Instant::now();
    let max_keys = state.config.limits.max_keys;
    if request.keys.len() > max_keys {
        return Err(ApiError::too_large(format!(
            "{} keys; a multi-get reads at most {max_keys} (limits.max_keys)",
            request.keys.len()
        )));
    }
    let table = state.table(&table)?;
    let key_type = table.def().key_type;
    let keys = request
        .keys
        .iter()
        .map(|k| key_from_json(key_type, k))
        .collect::<ApiResult<Vec<_>>>()?;
    // Read a chunk at a time at one snapshot, each chunk's rows written out as JSON before the
    // next is read: the response, not the rows of every key at once, is what memory holds, and
    // it is refused once past `limits.max_response_bytes`.
    let mut slow = SlowRead::new(&state, "/v1/tables/{table}/multi-get", table, None, started);
    let snapshot = state.db()?.snapshot();
    let max_bytes = state.config.limits.max_response_bytes;
    let mut out = b"{\"rows\":[".to_vec();
    let mut found = 0;
    for (i, chunk) in keys.chunks(MULTI_GET_CHUNK).enumerate() {
        let rows = snapshot.multi_get(slow.table(), chunk).await;
        let rows = slow.check(rows.map_err(ApiError::from))?;
        for (j, (&key, row)) in chunk.iter().zip(rows).enumerate() {
            if i + j > 0 {
                out.push(b',');
            }
            found += usize::from(row.is_some());
            let row = row.map(|values| row_to_json(slow.table().def(), key, &values));
            // Writing JSON values into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &row);
        }
        if out.len() > max_bytes {
            return slow.check(Err(ApiError::too_large(format!(
                "the rows of these keys are more than {max_bytes} bytes \
                 (limits.max_response_bytes); ask for fewer keys at a time"
            ))));
        }
    }
    out.extend_from_slice(b"]}");
    slow.finished(found as u64);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        out,
    )
        .into_response())
}

/// Deletes the row at a key (a key without a row is not an error).
#[utoipa::path(delete, path = "/v1/tables/{table}/rows/{key}", tag = "rows",
    params(
        ("table" = String, Path, description = "The table"),
        ("key" = JsonKey, Path, description = "The key"),
        WriteParams,
    ),
    responses(
        (status = 200, description = "Committed", body = WriteResult),
        (status = 400, description = "Bad key", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 429, description = "Overloaded: writes are held back", body = ErrorBody),
        (status = 503, description = "Not ready or unavailable", body = ErrorBody),
    ))]
pub async fn delete_row(
    State(state): State<Arc<Shared>>,
    Path((table, key)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
) -> ApiResult<Json<WriteResult>> {
    let table = state.table(&table)?;
    let key = key_from_text(table.def().key_type, &key)?;
    let lsn = table.delete(key, state.write_options(params)).await?;
    Ok(Json(WriteResult { lsn }))
}

/// Deletes every row in a key range (`start` inclusive, `end` exclusive; absent is open).
#[utoipa::path(post, path = "/v1/tables/{table}/delete-range", tag = "rows",
    params(("table" = String, Path, description = "The table"), WriteParams),
    request_body = KeyRange,
    responses(
        (status = 200, description = "Committed", body = WriteResult),
        (status = 400, description = "Bad range", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Overloaded: writes are held back", body = ErrorBody),
        (status = 503, description = "Not ready or unavailable", body = ErrorBody),
    ))]
pub async fn delete_range(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
    Query(params): Query<WriteParams>,
    Json(range): Json<KeyRange>,
) -> ApiResult<Json<WriteResult>> {
    let table = state.table(&table)?;
    let bounds = range.bounds(table.def().key_type)?;
    let lsn = table
        .delete_range(bounds, state.write_options(params))
        .await?;
    Ok(Json(WriteResult { lsn }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn of(content_type: &[u8]) -> Media {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_bytes(content_type).unwrap(),
        );
        media(&headers)
    }

    #[test]
    fn media_types_are_read_as_every_route_reads_them() {
        assert_eq!(media(&HeaderMap::new()), Media::Unsaid);
        for json in [
            &b"application/json"[..],
            b"Application/JSON",
            b"application/json; charset=utf-8",
            b"application/problem+json",
        ] {
            assert_eq!(of(json), Media::Json, "{json:?}");
        }
        assert_eq!(of(b"application/vnd.apache.arrow.stream"), Media::Arrow);
        assert_eq!(of(b"Application/Vnd.Apache.Arrow.Stream;x=1"), Media::Arrow);
        for other in [
            &b"application/jsonl"[..],
            b"text/json",
            b"text/csv",
            b"\xffjson",
        ] {
            assert!(matches!(of(other), Media::Other(_)), "{other:?}");
        }
        assert!(expect_json(&HeaderMap::new()).is_ok());
    }
}
