//! `/v1/tables`: create, list, describe and drop tables.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use super::column::{CreateTable, TableInfo, TableList};
use super::{Json, Path};
use crate::error::{ApiResult, ErrorBody};
use crate::state::State as Shared;

/// Lists the tables.
#[utoipa::path(get, path = "/v1/tables", tag = "tables",
    responses(
        (status = 200, description = "The table names, sorted", body = TableList),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
pub async fn list_tables(State(state): State<Arc<Shared>>) -> ApiResult<Json<TableList>> {
    let mut tables = state.db()?.list_tables();
    tables.sort();
    Ok(Json(TableList { tables }))
}

/// Creates a table.
#[utoipa::path(post, path = "/v1/tables", tag = "tables", request_body = CreateTable,
    responses(
        (status = 201, description = "Created", body = TableInfo),
        (status = 400, description = "Invalid definition", body = ErrorBody),
        (status = 409, description = "A table of this name exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
pub async fn create_table(
    State(state): State<Arc<Shared>>,
    Json(request): Json<CreateTable>,
) -> ApiResult<(StatusCode, Json<TableInfo>)> {
    let table = state
        .db()?
        .create_table(&request.name, request.key_type.into(), request.schema())
        .await?;
    Ok((StatusCode::CREATED, Json(TableInfo::try_from(table.def())?)))
}

/// Describes a table.
#[utoipa::path(get, path = "/v1/tables/{table}", tag = "tables",
    params(("table" = String, Path, description = "The table")),
    responses(
        (status = 200, description = "The definition", body = TableInfo),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
pub async fn describe_table(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
) -> ApiResult<Json<TableInfo>> {
    let table = state.table(&table)?;
    Ok(Json(TableInfo::try_from(table.def())?))
}

/// Drops a table and its rows.
#[utoipa::path(delete, path = "/v1/tables/{table}", tag = "tables",
    params(("table" = String, Path, description = "The table")),
    responses(
        (status = 204, description = "Dropped"),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
pub async fn drop_table(
    State(state): State<Arc<Shared>>,
    Path(table): Path<String>,
) -> ApiResult<StatusCode> {
    state.db()?.drop_table(&table).await?;
    Ok(StatusCode::NO_CONTENT)
}
