//! One SQL surface for the series tables on both stores, so the placement rules in
//! `assemble.rs` and the reads in `read.rs` are written once: statements are plain strings in
//! the dialect SQLite and PostgreSQL share (`?N` placeholders, turned into `$N` for
//! PostgreSQL; `ON CONFLICT`, `RETURNING`, `IS NOT DISTINCT FROM`), values cross as four kinds
//! (integer, text, bytes, null), and flags are integers 0/1 on both. The PostgreSQL side is
//! synchronous on purpose: the rules are a deep, recursive, read-then-write walk that runs on
//! one writer thread per process, as SQLite's does, each statement blocking on the runtime.

use patchbay_store::StoreError;

/// A value bound to a statement, borrowed from the caller.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    /// SQL NULL.
    Null,
    /// An integer (flags are 0 or 1).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// What can be bound as an [`Arg`].
pub(crate) trait ToArg {
    /// The value as bound.
    fn arg(&self) -> Arg<'_>;
}

impl ToArg for i64 {
    fn arg(&self) -> Arg<'_> {
        Arg::Int(*self)
    }
}
impl ToArg for u32 {
    fn arg(&self) -> Arg<'_> {
        Arg::Int(i64::from(*self))
    }
}
impl ToArg for bool {
    fn arg(&self) -> Arg<'_> {
        Arg::Int(i64::from(*self))
    }
}
impl ToArg for str {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(self)
    }
}
impl ToArg for String {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(self)
    }
}
impl ToArg for [u8] {
    fn arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}
impl ToArg for Vec<u8> {
    fn arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}
impl<T: ToArg + ?Sized> ToArg for &T {
    fn arg(&self) -> Arg<'_> {
        (**self).arg()
    }
}
impl<T: ToArg> ToArg for Option<T> {
    fn arg(&self) -> Arg<'_> {
        self.as_ref().map_or(Arg::Null, ToArg::arg)
    }
}

/// The arguments of one statement, bound by reference: use it inside the call.
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::sql::ToArg::arg(&$a)),*] as &[$crate::sql::Arg<'_>] };
}
pub(crate) use args;

/// A value read from a row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    /// SQL NULL.
    Null,
    /// An integer (a PostgreSQL boolean reads as 0 or 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// What a [`Val`] can be read as.
pub(crate) trait FromVal: Sized {
    /// The value, or why it is not one of these.
    fn from_val(v: Val) -> Result<Self, String>;
}

impl FromVal for i64 {
    fn from_val(v: Val) -> Result<Self, String> {
        match v {
            Val::Int(i) => Ok(i),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}
impl FromVal for u32 {
    fn from_val(v: Val) -> Result<Self, String> {
        let i = i64::from_val(v)?;
        u32::try_from(i).map_err(|_| format!("{i} is out of range"))
    }
}
impl FromVal for bool {
    fn from_val(v: Val) -> Result<Self, String> {
        Ok(i64::from_val(v)? != 0)
    }
}
impl FromVal for String {
    fn from_val(v: Val) -> Result<Self, String> {
        match v {
            Val::Text(s) => Ok(s),
            Val::Blob(b) => String::from_utf8(b).map_err(|e| e.to_string()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromVal for Vec<u8> {
    fn from_val(v: Val) -> Result<Self, String> {
        match v {
            Val::Blob(b) => Ok(b),
            Val::Text(s) => Ok(s.into_bytes()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl<T: FromVal> FromVal for Option<T> {
    fn from_val(v: Val) -> Result<Self, String> {
        match v {
            Val::Null => Ok(None),
            v => T::from_val(v).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug)]
pub(crate) struct Row(Vec<Val>);

impl Row {
    /// Column `i` as a `T` (moved out: read each column once).
    pub(crate) fn get<T: FromVal>(&mut self, i: usize) -> Result<T, StoreError> {
        let v = self.0.get_mut(i).map(|v| std::mem::replace(v, Val::Null));
        let v = v.ok_or_else(|| StoreError::Corrupt(format!("column {i} was not selected")))?;
        T::from_val(v).map_err(|why| StoreError::Corrupt(format!("column {i}: {why}")))
    }
}

/// A transaction (or a read snapshot) of either store.
pub(crate) trait Sql {
    /// Runs a statement; returns how many rows it changed.
    fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError>;
    /// Runs a query; returns every row.
    fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError>;
    /// Runs an `INSERT` of one row into a table keyed by `id` and returns that id. SQLite reads
    /// the rowid instead of adding `RETURNING`, which SQLite runs as a trigger: the statement
    /// then keeps a statement journal, and releasing it walked the whole in-memory journal of the
    /// writer's savepoint (8% of an import's writer, issue 20).
    fn insert_id(&self, sql: &str, args: &[Arg<'_>]) -> Result<i64, StoreError>;
}

impl dyn Sql + '_ {
    /// The first row, if any.
    pub(crate) fn row(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }

    /// The first row, which must exist.
    pub(crate) fn one(&self, sql: &str, args: &[Arg<'_>]) -> Result<Row, StoreError> {
        self.row(sql, args)?
            .ok_or_else(|| StoreError::Corrupt(format!("no row for: {}", sql.split_whitespace().collect::<Vec<_>>().join(" "))))
    }

    /// The first column of the first row, if there is a row.
    pub(crate) fn value<T: FromVal>(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<T>, StoreError> {
        self.row(sql, args)?.map(|mut r| r.get(0)).transpose()
    }

    /// The first column of every row.
    pub(crate) fn column<T: FromVal>(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<T>, StoreError> {
        self.rows(sql, args)?.into_iter().map(|mut r| r.get(0)).collect()
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Null => ValueRef::Null,
            Arg::Int(i) => ValueRef::Integer(i),
            Arg::Text(s) => ValueRef::Text(s.as_bytes()),
            Arg::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Sql for rusqlite::Connection {
    fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        Ok(self.prepare_cached(sql)?.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn insert_id(&self, sql: &str, args: &[Arg<'_>]) -> Result<i64, StoreError> {
        self.prepare_cached(sql)?.execute(rusqlite::params_from_iter(args))?;
        Ok(self.last_insert_rowid())
    }

    fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.prepare_cached(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(n);
            for i in 0..n {
                vals.push(match r.get_ref(i)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(i) => Val::Int(i),
                    ValueRef::Real(f) => Val::Int(f as i64),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::Blob(b.to_vec()),
                });
            }
            out.push(Row(vals));
        }
        Ok(out)
    }
}

/// A PostgreSQL transaction driven from a blocking thread (never from an async task).
pub(crate) struct Pg<'a, 't> {
    /// The transaction.
    pub(crate) tx: &'a deadpool_postgres::Transaction<'t>,
    /// The runtime its connection runs on.
    pub(crate) rt: &'a tokio::runtime::Handle,
}

/// A PostgreSQL failure as the store ports report it.
pub(crate) fn pg(e: impl Into<patchbay_store_pg::PgError>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

impl Pg<'_, '_> {
    fn prepared(&self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        self.rt.block_on(self.tx.prepare_cached(&patchbay_store_pg::dollars(sql))).map_err(|e| in_statement(e, sql))
    }
}

/// `e` with the statement it failed in, which a "column does not exist" needs to be found.
fn in_statement(e: tokio_postgres::Error, sql: &str) -> StoreError {
    let why = patchbay_store_pg::PgError::from(e);
    StoreError::Backend(format!("{why}, in: {}", sql.split_whitespace().collect::<Vec<_>>().join(" ")))
}

impl Sql for Pg<'_, '_> {
    fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let stmt = self.prepared(sql)?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        self.rt.block_on(self.tx.execute(&stmt, &params)).map_err(|e| in_statement(e, sql))
    }

    fn insert_id(&self, sql: &str, args: &[Arg<'_>]) -> Result<i64, StoreError> {
        let sql = format!("{sql} RETURNING id");
        (self as &dyn Sql).one(&sql, args)?.get(0)
    }

    fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        use tokio_postgres::types::Type;
        let stmt = self.prepared(sql)?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        let rows = self.rt.block_on(self.tx.query(&stmt, &params)).map_err(|e| in_statement(e, sql))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut vals = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let t = col.type_();
                let v = if *t == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map(|v| v.map(Val::Int))
                } else if *t == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i).map(|v| v.map(|v| Val::Int(v.into())))
                } else if *t == Type::INT2 {
                    r.try_get::<_, Option<i16>>(i).map(|v| v.map(|v| Val::Int(v.into())))
                } else if *t == Type::BOOL {
                    r.try_get::<_, Option<bool>>(i).map(|v| v.map(|v| Val::Int(v.into())))
                } else if *t == Type::BYTEA {
                    r.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map(Val::Blob))
                } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(t) {
                    r.try_get::<_, Option<String>>(i).map(|v| v.map(Val::Text))
                } else {
                    return Err(StoreError::Corrupt(format!("column {i} has type {t}, which the series tables do not use")));
                };
                vals.push(v.map_err(pg)?.unwrap_or(Val::Null));
            }
            out.push(Row(vals));
        }
        Ok(out)
    }
}

impl tokio_postgres::types::ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, Type};
        match *self {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Arg::Int(i) if *ty == Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
            Arg::Int(i) if *ty == Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
            Arg::Int(i) if *ty == Type::BOOL => (i != 0).to_sql(ty, out),
            Arg::Text(s) if *ty == Type::BYTEA => s.as_bytes().to_sql(ty, out),
            // PostgreSQL's TEXT refuses NUL, which SQLite keeps (a header may carry one).
            Arg::Text(s) if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR, Type::UNKNOWN].contains(ty) => {
                patchbay_store_pg::text(s).as_ref().to_sql(ty, out)
            }
            Arg::Blob(b) if *ty == Type::BYTEA => b.to_sql(ty, out),
            other => Err(format!("{other:?} cannot be bound where PostgreSQL expects {ty}").into()),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_round_trips_every_kind() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n TEXT)").unwrap();
        let db: &dyn Sql = &c;
        let none: Option<String> = None;
        assert_eq!(db.exec("INSERT INTO t VALUES (?1, ?2, ?3, ?4)", args![7u32, "x", b"\0y".to_vec(), none]).unwrap(), 1);
        let mut r = db.one("SELECT i, s, b, n, i = 7 FROM t", &[]).unwrap();
        assert_eq!(r.get::<u32>(0).unwrap(), 7);
        assert_eq!(r.get::<String>(1).unwrap(), "x");
        assert_eq!(r.get::<Vec<u8>>(2).unwrap(), b"\0y");
        assert_eq!(r.get::<Option<String>>(3).unwrap(), None);
        assert!(r.get::<bool>(4).unwrap());
        assert!(db.value::<i64>("SELECT i FROM t WHERE i = ?1", args![8i64]).unwrap().is_none());
        assert!(r.get::<i64>(9).is_err(), "a column not selected is an error, not a zero");
        assert!(db.value::<u32>("SELECT -1", &[]).is_err(), "out of range is an error");
    }
}
