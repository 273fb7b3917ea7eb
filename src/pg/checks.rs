//! The questions `pgzfs verify` asks a throwaway server started on a snapshot's clone:
//! which databases there are, amcheck on every B-tree index and (PostgreSQL 14 and later)
//! every heap, and a row count per table. A check that finds damage answers with what the
//! server said; only a lost session is an error.

use super::{describe_pg_error, Pg};
use crate::error::{Error, Result};

/// One relation a check looks at.
#[derive(Debug, Clone)]
pub struct Relation {
    pub oid: u32,
    /// `schema.name`, quoted where SQL would need it.
    pub name: String,
}

impl Pg {
    fn rows(&mut self, sql: &str) -> Result<Vec<postgres::Row>> {
        self.client.query(sql, &[]).map_err(|e| {
            Error::failed(format!(
                "{}: {}",
                self.target.describe(),
                describe_pg_error(&e)
            ))
        })
    }

    /// Run one statement whose failure is a finding, not an error: Ok(Err(message)).
    /// A session that broke meanwhile is an error.
    fn finding(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<std::result::Result<Vec<postgres::Row>, String>> {
        match self.client.query(sql, params) {
            Ok(rows) => Ok(Ok(rows)),
            Err(e) if e.as_db_error().is_some() && !self.client.is_closed() => {
                Ok(Err(describe_pg_error(&e)))
            }
            Err(e) => Err(Error::failed(format!(
                "{}: {}",
                self.target.describe(),
                describe_pg_error(&e)
            ))),
        }
    }

    /// The databases that accept connections (template0 does not), by name.
    pub fn connectable_databases(&mut self) -> Result<Vec<String>> {
        Ok(self
            .rows("SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY datname")?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub fn data_checksums(&mut self) -> Result<bool> {
        Ok(self
            .rows("SELECT current_setting('data_checksums') = 'on'")?
            .first()
            .is_some_and(|r| r.get(0)))
    }

    /// Make amcheck usable in this database: Ok(false) when the server has no such
    /// extension installed (contrib missing). Creating it changes the database, which is
    /// fine on a throwaway clone and never done anywhere else.
    pub fn ensure_amcheck(&mut self) -> Result<std::result::Result<bool, String>> {
        let available = !self
            .rows("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'")?
            .is_empty();
        if !available {
            return Ok(Ok(false));
        }
        Ok(self
            .finding("CREATE EXTENSION IF NOT EXISTS amcheck", &[])?
            .map(|_| true))
    }

    /// Every B-tree index amcheck can check (valid, ready, not another session's temp).
    pub fn btree_indexes(&mut self) -> Result<Vec<Relation>> {
        self.relations(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_am am ON am.oid = c.relam \
             WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready \
             AND c.relpersistence <> 't' ORDER BY 2",
        )
    }

    /// Every table, materialized view and TOAST table (what verify_heapam reads).
    pub fn heap_relations(&mut self) -> Result<Vec<Relation>> {
        self.relations(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't' ORDER BY 2",
        )
    }

    /// The user's tables and materialized views, for row counts.
    pub fn user_tables(&mut self) -> Result<Vec<Relation>> {
        self.relations(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 2",
        )
    }

    fn relations(&mut self, sql: &str) -> Result<Vec<Relation>> {
        Ok(self
            .rows(sql)?
            .iter()
            .map(|r| Relation {
                oid: r.get(0),
                name: r.get(1),
            })
            .collect())
    }

    /// `bt_index_check`: Ok(Err(what amcheck said)) when the index is damaged.
    pub fn bt_index_check(&mut self, index: &Relation) -> Result<std::result::Result<(), String>> {
        Ok(self
            .finding("SELECT bt_index_check($1::oid)::text", &[&index.oid])?
            .map(drop))
    }

    /// `verify_heapam` (PostgreSQL 14 and later): the problems it reports, at most a few.
    pub fn verify_heapam(&mut self, heap: &Relation) -> Result<Vec<String>> {
        let found = self.finding(
            "SELECT format('block %s, offset %s: %s', blkno, offnum, msg) \
             FROM verify_heapam($1::oid) LIMIT 5",
            &[&heap.oid],
        )?;
        Ok(match found {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(message) => vec![message],
        })
    }

    /// `count(*)` of one table: Ok(Err(...)) when reading it fails (a missing file, a
    /// damaged page).
    pub fn row_count(&mut self, table: &Relation) -> Result<std::result::Result<i64, String>> {
        // The name comes from format('%I.%I') on the server itself, so it is quoted.
        let sql = format!("SELECT count(*) FROM {}", table.name);
        Ok(self
            .finding(&sql, &[])?
            .map(|rows| rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0)))
    }
}
