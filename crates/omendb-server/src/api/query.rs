//! Range reads: scan (paged, streamed), aggregate and explain, and the slow query log entry
//! each read may leave.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use futures::stream::BoxStream;
use omendb_core::{Aggregate, Explain, Key, KeyType, ScanOptions, Table};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use tokio::sync::OwnedSemaphorePermit;
use utoipa::ToSchema;

use super::row::{JsonKey, JsonRow, batch_to_json, key_at, key_from_json, key_to_json};
use super::rows::{Media, media_of};
use super::{ARROW_STREAM, Json, Path};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::slow_log::{Outcome, SlowQuery, now};
use crate::state::State as Shared;

/// The response header that carries an Arrow page's continuation token.
pub const PAGE_TOKEN_HEADER: &str = "omendb-next-page-token";

/// A key range: `start` inclusive, `end` exclusive; an absent side is open.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRange {
    /// The first key (inclusive).
    #[schema(value_type = Option<JsonKey>)]
    pub start: Option<JsonValue>,
    /// The end (exclusive).
    #[schema(value_type = Option<JsonKey>)]
    pub end: Option<JsonValue>,
}

/// Bounds of a key range.
pub type KeyBounds = (Bound<Key>, Bound<Key>);

impl KeyRange {
    /// The bounds for a table keyed by `key_type`.
    pub fn bounds(&self, key_type: KeyType) -> ApiResult<KeyBounds> {
        let start = match &self.start {
            Some(k) => Bound::Included(key_from_json(key_type, k)?),
            None => Bound::Unbounded,
        };
        let end = match &self.end {
            Some(k) => Bound::Excluded(key_from_json(key_type, k)?),
            None => Bound::Unbounded,
        };
        Ok((start, end))
    }
}

// `start` and `end` are repeated here rather than a flattened `KeyRange`: serde cannot reject
// unknown properties of a struct with a flattened field.
/// A scan.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    /// The first key (inclusive).
    #[schema(value_type = Option<JsonKey>)]
    pub start: Option<JsonValue>,
    /// The end (exclusive).
    #[schema(value_type = Option<JsonKey>)]
    pub end: Option<JsonValue>,
    /// The value columns to return (the key always comes first); absent for all.
    pub projection: Option<Vec<String>>,
    /// The most rows in this response; at most (and by default) `limits.page_rows`.
    #[schema(minimum = 1)]
    pub limit: Option<usize>,
    /// Newest key first.
    #[serde(default)]
    pub reverse: bool,
    /// The `next_page_token` of the previous page, to continue after it.
    pub page_token: Option<String>,
}

/// A page of a scan (the JSON form; it is streamed as it is read).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScanPage {
    /// The rows, in key order (reversed when asked).
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<JsonRow>,
    /// Present when more rows follow: send the same scan with this `page_token`. Pages are
    /// read at separate snapshots.
    pub next_page_token: Option<String>,
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Rows with a non-null value.
    Count,
    /// Sum.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Mean.
    Avg,
}

impl From<Function> for Aggregate {
    fn from(function: Function) -> Self {
        match function {
            Function::Count => Aggregate::Count,
            Function::Sum => Aggregate::Sum,
            Function::Min => Aggregate::Min,
            Function::Max => Aggregate::Max,
            Function::Avg => Aggregate::Avg,
        }
    }
}

/// An aggregate over a key range.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateRequest {
    /// The first key (inclusive).
    #[schema(value_type = Option<JsonKey>)]
    pub start: Option<JsonValue>,
    /// The end (exclusive).
    #[schema(value_type = Option<JsonKey>)]
    pub end: Option<JsonValue>,
    /// The value column.
    pub column: String,
    /// The function.
    pub function: Function,
    /// Per bucket of this many key units (columns `bucket` and the function's name); absent
    /// for one row over the whole range.
    #[schema(minimum = 1)]
    pub bucket: Option<u64>,
}

/// Rows computed by the server (aggregates).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rows {
    /// The rows.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<JsonRow>,
}

/// What a read of a range would touch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExplainInfo {
    /// The table.
    pub table: String,
    /// The snapshot the read would use.
    pub snapshot: u64,
    /// Memtables that would be read.
    pub memtables: usize,
    /// Bytes in them.
    pub memtable_bytes: usize,
    /// Segments of the table.
    pub segments_total: usize,
    /// Segments skipped because their key range misses the read's.
    pub segments_pruned: usize,
    /// The segments read.
    pub segments: Vec<SegmentInfo>,
    /// Segment rows in the range (an upper bound on rows read from segments).
    pub rows_to_scan: u64,
}

/// How one segment would be read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SegmentInfo {
    /// The segment object.
    pub path: String,
    /// Its rows.
    pub rows: u64,
    /// The learned index kind.
    pub index: String,
    /// The index's mean search window, in keys.
    pub mean_window: f64,
    /// The largest search window.
    pub max_window: usize,
    /// Rows of the segment in the range.
    pub rows_in_range: u64,
}

impl From<Explain> for ExplainInfo {
    fn from(e: Explain) -> Self {
        Self {
            table: e.table,
            snapshot: e.snapshot,
            memtables: e.memtables,
            memtable_bytes: e.memtable_bytes,
            segments_total: e.segments_total,
            segments_pruned: e.segments_pruned,
            segments: e
                .segments
                .into_iter()
                .map(|s| SegmentInfo {
                    path: s.path,
                    rows: s.rows,
                    index: s.index.to_owned(),
                    mean_window: s.mean_window,
                    max_window: s.max_window,
                    rows_in_range: s.rows_in_range,
                })
                .collect(),
            rows_to_scan: e.rows_to_scan,
        }
    }
}

/// Whether the client asked for Arrow IPC: `Accept` lists it with a weight above 0 and no
/// weight above it for JSON (a JSON type as a body's `Content-Type` is read, `application/*` or
/// `*/*`). A search for the type's name in the header sent Arrow to
/// `...arrow.stream;q=0, application/json`.
fn wants_arrow(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut arrow, mut json) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or_default().trim();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media_of(essence) {
            Media::Arrow => arrow = arrow.max(weight),
            Media::Json => json = json.max(weight),
            _ if essence == "*/*" || essence.eq_ignore_ascii_case("application/*") => {
                json = json.max(weight);
            }
            _ => {}
        }
    }
    arrow > 0.0 && arrow >= json
}

const TOKEN_VERSION: &str = "v1:";

/// The token that continues a scan after `key`.
fn page_token(key: Key) -> String {
    let key = match key {
        Key::U64(k) => k.to_string(),
        Key::I64(k) => k.to_string(),
    };
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_VERSION}{key}"))
}

/// The key a token continues after.
fn token_key(key_type: KeyType, token: &str) -> ApiResult<Key> {
    let bad = || ApiError::bad_input("page_token is not one this server gave");
    let text = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = std::str::from_utf8(&text).map_err(|_| bad())?;
    let key = text.strip_prefix(TOKEN_VERSION).ok_or_else(bad)?;
    super::row::key_from_text(key_type, key).map_err(|_| bad())
}

/// Scans a key range: a page of rows, streamed as JSON (`{"rows": [...], "next_page_token"}`)
/// or, with `Accept: application/vnd.apache.arrow.stream`, an Arrow IPC stream whose
/// continuation token is in the `omendb-next-page-token` header.
#[utoipa::path(post, path = "/v1/tables/{table}/scan", tag = "reads",
    params(("table" = String, Path, description = "The table")),
    request_body = ScanRequest,
    responses(
        (status = 200, description = "A page of rows", content(
            (ScanPage = "application/json"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
        )),
        (status = 400, description = "Bad range, projection or token", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many queries", body = ErrorBody),
        (status = 503, description = "Not ready or unavailable", body = ErrorBody),
    ))]
pub async fn scan(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
    headers: HeaderMap,
    Json(request): Json<ScanRequest>,
) -> ApiResult<Response> {
    let permit = state.query_permit()?;
    let started = Instant::now();
    let table = state.table(&table)?;
    let key_type = table.def().key_type;
    let (mut start, mut end) = KeyRange {
        start: request.start.clone(),
        end: request.end.clone(),
    }
    .bounds(key_type)?;
    if let Some(token) = &request.page_token {
        let after = token_key(key_type, token)?;
        if request.reverse {
            end = past_token(end, after, true, key_type)?;
        } else {
            start = past_token(start, after, false, key_type)?;
        }
    }
    let page_rows = state.config.limits.page_rows;
    let page = match request.limit {
        Some(0) => return Err(ApiError::bad_input("limit must be at least 1")),
        Some(limit) => limit.min(page_rows),
        None => page_rows,
    };
    let options = ScanOptions {
        projection: request.projection.clone(),
        // One row more than the page tells whether another page follows.
        limit: Some(page.saturating_add(1)),
        reverse: request.reverse,
        // Batches small enough that one of rows at the engine's size limit stays near the
        // page's byte budget: the budget is checked after each batch, and a page of the
        // engine's default 8,192-row batches held thousands of large rows before it could.
        batch_rows: Some(scan_batch_rows(state.config.limits.max_response_bytes)),
    };
    // The slow query log describes the range this page reads, its token applied (it logged the
    // whole requested range, so a late page listed every segment from the range's start).
    let bounds = (start, end);
    let rows = table.scan(bounds, options)?;
    let mut read = PageRead {
        rows,
        page,
        sent: 0,
        bytes: 0,
        max_bytes: state.config.limits.max_response_bytes,
        last: None,
        deadline: tokio::time::Instant::now() + state.request_timeout(),
        slow: SlowRead::new(
            &state,
            "/v1/tables/{table}/scan",
            table,
            Some(bounds),
            started,
        ),
        _permit: permit,
    };
    if wants_arrow(&headers) {
        let schema = projected_schema(read.slow.table(), request.projection.as_deref())?;
        return read.into_arrow(schema).await;
    }
    let mut more = false;
    let first = read.next_batch(&mut more).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from_stream(stream_page(JsonPage::Head(read, first, more))),
    )
        .into_response())
}

/// `bound`, the scan's start (its end when `reverse`), narrowed to the keys past a page token's
/// key `after`: a token narrows the range the request names and never widens it. It replaced
/// the bound, so a token from another range (or a forged one) read rows outside the range asked
/// for.
fn past_token(
    bound: Bound<Key>,
    after: Key,
    reverse: bool,
    key_type: KeyType,
) -> ApiResult<Bound<Key>> {
    let order = |key: Key| {
        key_type
            .encode(key)
            .map_err(|e| ApiError::bad_input(e.to_string()))
    };
    let token = order(after)?;
    let tighter = match bound {
        Bound::Unbounded => false,
        Bound::Included(key) if reverse => order(key)? < token,
        Bound::Included(key) => order(key)? > token,
        Bound::Excluded(key) if reverse => order(key)? <= token,
        Bound::Excluded(key) => order(key)? >= token,
    };
    Ok(if tighter {
        bound
    } else {
        Bound::Excluded(after)
    })
}

/// The chunks of a JSON page, made by a task of their own. A response body runs only while the
/// client reads it: one that stopped reading (its connection open, its socket full) would hold
/// the scan, its snapshot and its query slot for good. The task gives them up at the request's
/// deadline, when a chunk still finds no room; the body then ends with an error.
fn stream_page(page: JsonPage) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let deadline = page.deadline();
    let (chunks, received) = tokio::sync::mpsc::channel(2);
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::clone(&finished);
    tokio::spawn(async move {
        let mut page = Some(page);
        while let Some((chunk, next)) = match page.take() {
            Some(current) => current.next().await,
            None => None,
        } {
            page = Some(next);
            match tokio::time::timeout_at(deadline, chunks.send(chunk)).await {
                Ok(Ok(())) => {}
                // The client went away, or stopped reading past the deadline.
                Ok(Err(_)) | Err(_) => return,
            }
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    futures::stream::unfold(Some(received), move |received| {
        let finished = Arc::clone(&finished);
        async move {
            let mut received = received?;
            match received.recv().await {
                Some(chunk) => Some((chunk, Some(received))),
                None if finished.load(std::sync::atomic::Ordering::Acquire) => None,
                None => Some((
                    Err(std::io::Error::other(
                        "the scan ran longer than limits.request_timeout_ms",
                    )),
                    None,
                )),
            }
        }
    })
}

/// The schema of a scan's batches with `projection`.
fn projected_schema(table: &Table, projection: Option<&[String]>) -> ApiResult<SchemaRef> {
    let output = &table.def().output;
    let Some(projection) = projection else {
        return Ok(Arc::clone(output));
    };
    let mut fields = vec![output.field(0).clone()];
    for name in projection {
        let field = output
            .field_with_name(name)
            .map_err(|_| ApiError::bad_input(format!("no column {name:?}")))?;
        fields.push(field.clone());
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// `batches` as one Arrow IPC stream response.
fn arrow_response(schema: &SchemaRef, batches: &[RecordBatch]) -> ApiResult<Response> {
    let ipc = |e: arrow_schema::ArrowError| ApiError::internal(format!("Arrow IPC: {e}"));
    let mut out = Vec::new();
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut out, schema).map_err(ipc)?;
    for batch in batches {
        writer.write(batch).map_err(ipc)?;
    }
    writer.finish().map_err(ipc)?;
    drop(writer);
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM))],
        out,
    )
        .into_response())
}

/// One page of a scan being read.
struct PageRead {
    rows: BoxStream<'static, omendb_core::Result<RecordBatch>>,
    page: usize,
    sent: usize,
    /// Bytes of the rows sent (their Arrow arrays'), against `limits.max_response_bytes`.
    bytes: usize,
    max_bytes: usize,
    last: Option<Key>,
    deadline: tokio::time::Instant,
    /// The table, and the entry written when the page is dropped: sent whole, cut by an error, or abandoned.
    slow: SlowRead,
    // Held until the response is sent or the client goes away: a query counts against
    // `limits.max_concurrent_queries` while its rows are read.
    _permit: OwnedSemaphorePermit,
}

impl PageRead {
    /// The next batch of the page (cut to the page), `Ok(None)` at its end; `more` is set when
    /// a row beyond the page exists.
    async fn next_batch(&mut self, more: &mut bool) -> ApiResult<Option<RecordBatch>> {
        if self.sent >= self.page {
            return Ok(None);
        }
        let Some(batch) = self.next_rows().await? else {
            return Ok(None);
        };
        let room = self.page - self.sent;
        let batch = if batch.num_rows() > room {
            *more = true;
            batch.slice(0, room)
        } else {
            batch
        };
        self.sent += batch.num_rows();
        self.slow.rows = self.sent as u64;
        self.last = key_at(&batch, batch.num_rows() - 1).or(self.last);
        self.bytes = self.bytes.saturating_add(rows_bytes(&batch));
        if self.bytes >= self.max_bytes {
            // The page's bytes are spent: it ends here, with a token if rows follow. An Arrow
            // page is held whole until it is sent, and large rows would otherwise make it
            // `page_rows` of them.
            self.page = self.sent;
        }
        if self.sent == self.page && !*more {
            // The page is full: one more row (asked for) says whether another follows.
            *more = self.next_rows().await?.is_some();
        }
        Ok(Some(batch))
    }

    /// The engine's next non-empty batch, before the request's deadline.
    async fn next_rows(&mut self) -> ApiResult<Option<RecordBatch>> {
        loop {
            let next = tokio::time::timeout_at(self.deadline, self.rows.next())
                .await
                .map_err(|_| {
                    ApiError::timeout("the scan ran longer than limits.request_timeout_ms")
                });
            let next = self
                .slow
                .check(next.and_then(|n| n.transpose().map_err(ApiError::from)))?;
            match next {
                Some(batch) if batch.num_rows() == 0 => continue,
                batch => return Ok(batch),
            }
        }
    }

    fn token(&self, more: bool) -> Option<String> {
        more.then_some(self.last).flatten().map(page_token)
    }

    fn finish(&mut self) {
        self.slow.finished(self.sent as u64);
    }

    /// The whole page as one Arrow IPC stream (bounded by `limits.page_rows`).
    async fn into_arrow(mut self, schema: SchemaRef) -> ApiResult<Response> {
        let mut more = false;
        let mut batches = Vec::new();
        while let Some(batch) = self.next_batch(&mut more).await? {
            batches.push(batch);
        }
        let mut response = self.slow.check(arrow_response(&schema, &batches))?;
        self.finish();
        if let Some(value) = self
            .token(more)
            .and_then(|token| HeaderValue::from_str(&token).ok())
        {
            response.headers_mut().insert(PAGE_TOKEN_HEADER, value);
        }
        Ok(response)
    }
}

/// Rows per engine batch of a scan with a byte budget of `max_bytes`: as many rows of the
/// engine's largest (`max_row_bytes`) as fit in it, at least 64 (small batches cost every scan
/// of small rows) and at most the engine's default of 8,192.
fn scan_batch_rows(max_bytes: usize) -> usize {
    let largest_row = omendb_core::db::Settings::default().max_row_bytes.max(1);
    (max_bytes / largest_row).clamp(64, 8192)
}

/// The bytes `batch`'s rows hold (of its arrays' buffers, counting only the slice a sliced array
/// covers).
fn rows_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| {
            let data = column.to_data();
            data.get_slice_memory_size()
                .unwrap_or_else(|_| column.get_array_memory_size())
        })
        .sum()
}

/// A JSON page being streamed: the head with the first batch (read before the answer began, so
/// that a scan that fails at once gets a proper error status), the rows batch by batch, the
/// tail.
enum JsonPage {
    Head(PageRead, Option<RecordBatch>, bool),
    Rows(PageRead, bool),
    Done,
}

/// Appends the rows of `batch` as JSON, each after a comma unless `first`.
fn write_rows(out: &mut Vec<u8>, batch: &RecordBatch, mut first: bool) {
    for row in batch_to_json(batch) {
        if !first {
            out.push(b',');
        }
        first = false;
        // Writing JSON values into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &row);
    }
}

impl JsonPage {
    /// The deadline of the request the page answers (`now` once it is done).
    fn deadline(&self) -> tokio::time::Instant {
        match self {
            JsonPage::Head(read, ..) | JsonPage::Rows(read, _) => read.deadline,
            JsonPage::Done => tokio::time::Instant::now(),
        }
    }

    /// The tail: the continuation token, and the slow-log entry of the finished page.
    fn tail(read: &mut PageRead, more: bool, out: &mut Vec<u8>) {
        read.finish();
        let token = serde_json::to_string(&read.token(more)).unwrap_or_else(|_| "null".to_owned());
        out.extend_from_slice(format!("],\"next_page_token\":{token}}}").as_bytes());
    }

    async fn next(self) -> Option<(Result<Bytes, std::io::Error>, JsonPage)> {
        match self {
            JsonPage::Head(mut read, first, more) => {
                let mut out = b"{\"rows\":[".to_vec();
                match first {
                    Some(batch) => {
                        write_rows(&mut out, &batch, true);
                        Some((Ok(Bytes::from(out)), JsonPage::Rows(read, more)))
                    }
                    None => {
                        Self::tail(&mut read, more, &mut out);
                        Some((Ok(Bytes::from(out)), JsonPage::Done))
                    }
                }
            }
            JsonPage::Rows(mut read, mut more) => match read.next_batch(&mut more).await {
                Ok(Some(batch)) => {
                    let mut out = Vec::new();
                    write_rows(&mut out, &batch, false);
                    Some((Ok(Bytes::from(out)), JsonPage::Rows(read, more)))
                }
                Ok(None) => {
                    let mut out = Vec::new();
                    Self::tail(&mut read, more, &mut out);
                    Some((Ok(Bytes::from(out)), JsonPage::Done))
                }
                Err(err) => {
                    // The status line is sent: the only way left to tell the client is to end
                    // the body early (its JSON is then incomplete).
                    tracing::warn!(code = err.code, error = %err.message, "a scan failed while streaming");
                    Some((Err(std::io::Error::other(err.message)), JsonPage::Done))
                }
            },
            JsonPage::Done => None,
        }
    }
}

/// Computes an aggregate over a key range, per bucket when asked.
#[utoipa::path(post, path = "/v1/tables/{table}/aggregate", tag = "reads",
    params(("table" = String, Path, description = "The table")),
    request_body = AggregateRequest,
    responses(
        (status = 200, description = "The result rows", content(
            (Rows = "application/json"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
        )),
        (status = 400, description = "Bad range, column or bucket", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many queries", body = ErrorBody),
        (status = 503, description = "Not ready or unavailable", body = ErrorBody),
    ))]
pub async fn aggregate(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
    headers: HeaderMap,
    Json(request): Json<AggregateRequest>,
) -> ApiResult<Response> {
    let _permit = state.query_permit()?;
    let started = Instant::now();
    let table = state.table(&table)?;
    if request.bucket == Some(0) {
        return Err(ApiError::bad_input("bucket must be at least 1"));
    }
    let bounds = KeyRange {
        start: request.start.clone(),
        end: request.end.clone(),
    }
    .bounds(table.def().key_type)?;
    let mut slow = SlowRead::new(
        &state,
        "/v1/tables/{table}/aggregate",
        table,
        Some(bounds),
        started,
    );
    let result = tokio::time::timeout(
        state.request_timeout(),
        slow.table().aggregate(
            bounds,
            &request.column,
            request.function.into(),
            request.bucket,
        ),
    )
    .await
    .map_err(|_| ApiError::timeout("the aggregate ran longer than limits.request_timeout_ms"))
    .and_then(|r| r.map_err(ApiError::from));
    let result = slow.check(result)?;
    slow.finished(result.num_rows() as u64);
    if wants_arrow(&headers) {
        return arrow_response(&result.schema(), std::slice::from_ref(&result));
    }
    Ok(Json(Rows {
        rows: batch_to_json(&result),
    })
    .into_response())
}

/// Describes what a read of a key range would touch: memtables, segments pruned and kept,
/// each segment's index and its search window, rows to scan.
#[utoipa::path(post, path = "/v1/tables/{table}/explain", tag = "reads",
    params(("table" = String, Path, description = "The table")),
    request_body = KeyRange,
    responses(
        (status = 200, description = "The plan", body = ExplainInfo),
        (status = 400, description = "Bad range", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
pub async fn explain(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
    Json(range): Json<KeyRange>,
) -> ApiResult<Json<ExplainInfo>> {
    let table = state.table(&table)?;
    let bounds = range.bounds(table.def().key_type)?;
    Ok(Json(table.explain(bounds)?.into()))
}

/// A read's entry in the slow query log, written when the read ends however it ends: finished,
/// failed, or dropped unfinished (its client went away, or the request's deadline cut it). Only
/// reads that finished were logged, so the slowest, those the deadline cut, never were.
pub struct SlowRead {
    state: Arc<Shared>,
    route: &'static str,
    table: Table,
    bounds: Option<KeyBounds>,
    rows: u64,
    started: Instant,
    outcome: Outcome,
}

impl SlowRead {
    /// The entry of a read of `table` in `bounds` (`None`: of listed keys) that began at
    /// `started`; until told otherwise it is `abandoned`. It takes the table (the read uses it
    /// through [`SlowRead::table`]): a copy per read cost every request its allocations.
    pub fn new(
        state: &Arc<Shared>,
        route: &'static str,
        table: Table,
        bounds: Option<KeyBounds>,
        started: Instant,
    ) -> Self {
        SlowRead {
            state: Arc::clone(state),
            route,
            table,
            bounds,
            rows: 0,
            started,
            outcome: Outcome::Abandoned,
        }
    }

    /// The table read.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The read finished, returning `rows` rows.
    pub fn finished(&mut self, rows: u64) {
        self.rows = rows;
        self.outcome = Outcome::Ok;
    }

    /// Passes `result` on, marking the read failed if it is an error.
    pub fn check<T>(&mut self, result: ApiResult<T>) -> ApiResult<T> {
        if result.is_err() {
            self.outcome = Outcome::Error;
        }
        result
    }
}

impl Drop for SlowRead {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        if !self.state.slow_log.wants(elapsed) {
            return;
        }
        let explain = self
            .bounds
            .and_then(|b| self.table.explain(b).ok())
            .and_then(|e| serde_json::to_value(ExplainInfo::from(e)).ok());
        let range = match self.bounds {
            None => "keys".to_owned(),
            Some((start, end)) => format!("{}, {}", describe(start), describe(end)),
        };
        self.state.slow_log.write(&SlowQuery {
            time: now(),
            route: self.route,
            table: self.table.name(),
            range,
            rows: self.rows,
            duration_ms: elapsed.as_secs_f64() * 1e3,
            outcome: self.outcome,
            explain,
        });
    }
}

fn describe(bound: Bound<Key>) -> String {
    match bound {
        Bound::Included(k) => format!("{} (incl)", key_to_json(k)),
        Bound::Excluded(k) => format!("{} (excl)", key_to_json(k)),
        Bound::Unbounded => "open".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn arrow_is_sent_only_when_accept_weighs_it_at_least_as_json() {
        let wants = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, accept.parse().unwrap());
            wants_arrow(&headers)
        };
        assert!(!wants_arrow(&HeaderMap::new()));
        assert!(wants(ARROW_STREAM));
        assert!(wants("Application/Vnd.Apache.Arrow.Stream"));
        assert!(wants(
            "application/json;q=0.5, application/vnd.apache.arrow.stream"
        ));
        assert!(wants("*/*, application/vnd.apache.arrow.stream"));
        assert!(!wants(
            "application/vnd.apache.arrow.stream;q=0, application/json"
        ));
        assert!(!wants("application/vnd.apache.arrow.stream;q=0"));
        assert!(!wants(
            "application/vnd.apache.arrow.stream;q=0.2, */*;q=0.8"
        ));
        assert!(!wants("application/json"));
        assert!(!wants(
            "application/vnd.apache.arrow.stream;q=0.5, application/problem+json"
        ));
        assert!(!wants("application/vnd.apache.arrow.streaming"));
    }
}
