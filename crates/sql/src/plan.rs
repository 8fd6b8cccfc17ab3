//! How a [`WriteBatch`] becomes few statements: consecutive `Put`s are coalesced per table
//! into multi-row inserts. This is where the write path's throughput comes from — one
//! statement round trip for hundreds of rows instead of one per row.
//!
//! The rules that keep the result equal to running the writes one by one:
//! - a `Put` never moves across an `Exec` (the statement may read or change those rows);
//! - between two `Exec`s, tables are written in the order they first appear;
//! - a table with `update` columns keeps only the last row per key (an upsert overwrites,
//!   and PostgreSQL refuses the same key twice in one `ON CONFLICT DO UPDATE`). The row
//!   that wins is written whole: a venue's non-`update` columns are immutable by contract;
//! - an insert-only table keeps every row, so a duplicate key still fails the batch (it is
//!   the dedup record of an exactly-once effect).
//!
//! Rows of a statement are sorted by key: two writers that put the same tables take their
//! row locks in the same order and cannot deadlock on them.

use std::collections::BTreeMap;

use agora_core::store::{Dialect, Table, Value, Write, WriteBatch};

/// The most bind parameters one statement may carry (PostgreSQL counts them in a u16, and
/// MySQL's prepared statements have the same limit).
const PARAMS_MAX: usize = 65_535;

/// The most rows one insert carries, whatever the width. Larger statements save little and
/// cost the server more to plan.
const ROWS_MAX: usize = 1_024;

/// One statement of a planned batch.
#[derive(Debug)]
pub(crate) enum Step<'b> {
    /// Rows of one table, in key order, no more than [`rows_max`] of them.
    Rows {
        table: &'static Table,
        rows: Vec<&'b [Value]>,
    },
    Exec {
        sql: &'static str,
        params: &'b [Value],
    },
}

/// How a table's rows are split into statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sizing {
    /// One placeholder per value: statements of power-of-two row counts (see [`chunks`]).
    PowersOfTwo,
    /// The rows travel as one parameter (PostgreSQL's [`json_insert_sql`]): the statement is
    /// the same whatever the count, so one carries up to [`ROWS_MAX`] rows.
    OneParameter,
}

/// The statements that apply `batch`, in order.
pub(crate) fn plan(batch: &WriteBatch, sizing: Sizing) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    // The tables put since the last `Exec`, in order of first appearance.
    let mut pending: Vec<(&'static Table, Vec<&[Value]>)> = Vec::new();
    for write in &batch.writes {
        let values = batch.values_of(write);
        match *write {
            Write::Put { table, .. } => {
                match pending.iter_mut().find(|(t, _)| std::ptr::eq(*t, table)) {
                    Some((_, rows)) => rows.push(values),
                    None => pending.push((table, vec![values])),
                }
            }
            Write::Exec { sql, .. } => {
                flush(&mut pending, &mut steps, sizing);
                steps.push(Step::Exec {
                    sql,
                    params: values,
                });
            }
        }
    }
    flush(&mut pending, &mut steps, sizing);
    steps
}

fn flush<'b>(
    pending: &mut Vec<(&'static Table, Vec<&'b [Value]>)>,
    steps: &mut Vec<Step<'b>>,
    sizing: Sizing,
) {
    for (table, mut rows) in pending.drain(..) {
        if table.update.is_empty() {
            // Stable: duplicates stay in the statement, and the database refuses them.
            rows.sort_by(|a, b| key(table, a).cmp(&key(table, b)));
        } else {
            let last: BTreeMap<Key, &[Value]> = rows.iter().map(|r| (key(table, r), *r)).collect();
            rows = last.into_values().collect();
        }
        match sizing {
            Sizing::PowersOfTwo => {
                for chunk in chunks(rows.len(), rows_max(table)) {
                    let rest = rows.split_off(chunk);
                    steps.push(Step::Rows { table, rows });
                    rows = rest;
                }
            }
            Sizing::OneParameter => {
                while rows.len() > ROWS_MAX {
                    let rest = rows.split_off(ROWS_MAX);
                    steps.push(Step::Rows { table, rows });
                    rows = rest;
                }
                steps.push(Step::Rows { table, rows });
            }
        }
    }
}

/// The most rows of `table` one statement carries: a power of two (see [`chunks`]).
pub(crate) fn rows_max(table: &Table) -> usize {
    let fit = (PARAMS_MAX / table.columns.len()).min(ROWS_MAX);
    1 << fit.ilog2()
}

/// Splits `n` rows into statement sizes: as many of `max` as fit, then the powers of two
/// of the rest, largest first. Every size is a power of two, so a table has at most
/// `log2(max) + 1` distinct statements, and the connection's prepared-statement cache
/// keeps them all instead of preparing a new statement for every batch size.
fn chunks(n: usize, max: usize) -> impl Iterator<Item = usize> {
    let full = std::iter::repeat_n(max, n / max);
    let rest = n % max;
    let parts = (0..usize::BITS)
        .rev()
        .map(|bit| 1usize << bit)
        .filter(move |size| rest & size != 0);
    full.chain(parts)
}

/// A row's key, ordered; text compares equal whether it is `Text` or `Static`.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart<'b> {
    Null,
    Int(i64),
    Text(&'b str),
}

type Key<'b> = Vec<KeyPart<'b>>;

fn key<'b>(table: &Table, row: &'b [Value]) -> Key<'b> {
    row[..table.key_len]
        .iter()
        .map(|v| match v {
            Value::Null => KeyPart::Null,
            Value::Int(i) => KeyPart::Int(*i),
            Value::Text(s) => KeyPart::Text(s),
            Value::Static(s) => KeyPart::Text(s),
        })
        .collect()
}

/// PostgreSQL's insert of any number of rows of `table` as one JSON array of objects keyed
/// by column name (see [`json_rows`]), the same upsert or plain insert as [`insert_sql`].
/// `json_populate_recordset` converts each field to the column's type, so the statement is
/// one text for every batch size: one round trip per table however large the batch, where
/// one placeholder per value needs a statement per power of two.
pub(crate) fn json_insert_sql(table: &Table) -> String {
    json_insert_sql_guarded(table, 1, "")
}

/// [`json_insert_sql`] with the rows in parameter `$param` and inserted only where `guard`
/// (an SQL condition, or empty) holds: a part of a one-statement commit (see
/// `Writer::commit_in_one_statement`).
pub(crate) fn json_insert_sql_guarded(table: &Table, param: usize, guard: &str) -> String {
    let quote = |c: &str| format!("\"{c}\"");
    let columns: Vec<String> = table.columns.iter().map(|c| quote(c)).collect();
    let columns = columns.join(", ");
    let mut sql = format!(
        "INSERT INTO {name} ({columns}) SELECT {columns} FROM json_populate_recordset(NULL::{name}, ${param}::json)",
        name = quote(table.name),
    );
    if !guard.is_empty() {
        sql += " WHERE ";
        sql += guard;
    }
    if !table.update.is_empty() {
        sql += &on_conflict_update(table);
    }
    sql
}

/// PostgreSQL's (and SQLite's) upsert clause: on the primary key, overwrite the `update`
/// columns.
fn on_conflict_update(table: &Table) -> String {
    let quote = |c: &str| format!("\"{c}\"");
    let key: Vec<String> = table.key().iter().map(|c| quote(c)).collect();
    let set: Vec<String> = table
        .update
        .iter()
        .map(|c| format!("{0} = excluded.{0}", quote(c)))
        .collect();
    format!(
        " ON CONFLICT ({}) DO UPDATE SET {}",
        key.join(", "),
        set.join(", ")
    )
}

/// The argument of [`json_insert_sql`]: `rows` as a JSON array of objects keyed by column.
pub(crate) fn json_rows(table: &Table, rows: &[&[Value]]) -> String {
    use std::fmt::Write as _;
    // Written straight into one string (strings escaped by serde_json): a batch can carry
    // thousands of rows, and a tree of `serde_json::Value`s would allocate per field.
    let keys: Vec<String> = table
        .columns
        .iter()
        .map(|c| serde_json::to_string(c).expect("a str serializes"))
        .collect();
    let mut json = String::with_capacity(rows.len() * table.columns.len() * 16 + 2);
    json.push('[');
    for (i, row) in rows.iter().enumerate() {
        json.push_str(if i == 0 { "{" } else { ",{" });
        for (j, (key, value)) in keys.iter().zip(row.iter()).enumerate() {
            if j > 0 {
                json.push(',');
            }
            json.push_str(key);
            json.push(':');
            match value {
                Value::Null => json.push_str("null"),
                Value::Int(v) => write!(json, "{v}").expect("writing to a String"),
                Value::Text(_) | Value::Static(_) => {
                    let text = value.as_str().expect("text values have a str");
                    json.push_str(&serde_json::to_string(text).expect("a str serializes"));
                }
            }
        }
        json.push('}');
    }
    json.push(']');
    json
}

/// The insert of `rows` rows of `table` in `dialect`: an upsert of the `update` columns
/// when the table has some, else a plain insert that fails on a duplicate key. Spelled
/// like the port's [`agora_core::store::upsert_sql`], with more than one row (and, for
/// MySQL, a guard against matching another unique key).
pub(crate) fn insert_sql(dialect: Dialect, table: &Table, rows: usize) -> String {
    let quote = |c: &str| match dialect {
        Dialect::Mysql => format!("`{c}`"),
        _ => format!("\"{c}\""),
    };
    let columns: Vec<String> = table.columns.iter().map(|c| quote(c)).collect();
    let width = table.columns.len();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(table.name),
        columns.join(", ")
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let placeholders: Vec<String> = (1..=width)
            .map(|i| match dialect {
                Dialect::Postgres => format!("${}", row * width + i),
                Dialect::Sqlite => format!("?{}", row * width + i),
                Dialect::Mysql => "?".to_string(),
            })
            .collect();
        sql.push('(');
        sql.push_str(&placeholders.join(", "));
        sql.push(')');
    }
    if table.update.is_empty() {
        return sql;
    }
    match dialect {
        Dialect::Mysql => {
            // MySQL updates the row that any unique key matched, where PostgreSQL's
            // ON CONFLICT (key) updates only the row with the same primary key and refuses
            // the others. The guard keeps MySQL to that: when the existing row's key differs
            // from the new row's (a secondary unique key matched), it sets the key's first
            // column to NULL, which strict mode refuses (see `Backend::other_key_conflict`),
            // before any column is updated.
            let first = quote(table.columns[0]);
            let same_key: Vec<String> = table
                .key()
                .iter()
                .map(|c| format!("{0} = VALUES({0})", quote(c)))
                .collect();
            let mut set = vec![format!(
                "{first} = IF({}, {first}, NULL)",
                same_key.join(" AND ")
            )];
            set.extend(
                table
                    .update
                    .iter()
                    .map(|c| format!("{0} = VALUES({0})", quote(c))),
            );
            sql += &format!(" ON DUPLICATE KEY UPDATE {}", set.join(", "));
        }
        _ => sql += &on_conflict_update(table),
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_core::store::upsert_sql;

    static ITEMS: Table = Table {
        name: "items",
        columns: &["id", "kind", "qty"],
        key_len: 1,
        update: &["qty"],
    };
    static EVENTS: Table = Table {
        name: "events",
        columns: &["stream", "n", "body"],
        key_len: 2,
        update: &[],
    };

    fn item(id: i64, qty: i64) -> [Value; 3] {
        [id.into(), "k".into(), qty.into()]
    }

    fn event(stream: &'static str, n: i64) -> [Value; 3] {
        [stream.into(), n.into(), Value::Null]
    }

    /// Steps as (table or SQL, first key column of each row).
    fn shape(steps: &[Step]) -> Vec<(String, Vec<Value>)> {
        steps
            .iter()
            .map(|s| match s {
                Step::Rows { table, rows } => (
                    table.name.to_string(),
                    rows.iter().map(|r| r[0].clone()).collect(),
                ),
                Step::Exec { sql, params } => (sql.to_string(), params.to_vec()),
            })
            .collect()
    }

    #[test]
    fn puts_coalesce_per_table_in_order_of_first_appearance() {
        let mut b = WriteBatch::default();
        b.put(&ITEMS, item(2, 1));
        b.put(&EVENTS, event("b", 1));
        b.put(&ITEMS, item(1, 1));
        b.put(&EVENTS, event("a", 1));
        assert_eq!(
            shape(&plan(&b, Sizing::PowersOfTwo)),
            [
                ("items".into(), vec![1i64.into(), 2i64.into()]),
                ("events".into(), vec!["a".into(), "b".into()]),
            ]
        );
    }

    #[test]
    fn no_put_moves_across_an_exec() {
        let mut b = WriteBatch::default();
        b.put(&ITEMS, item(1, 1));
        b.exec("DELETE FROM items WHERE id = ?", [1i64.into()]);
        b.put(&ITEMS, item(1, 2));
        b.put(&EVENTS, event("a", 1));
        assert_eq!(
            shape(&plan(&b, Sizing::PowersOfTwo)),
            [
                ("items".into(), vec![1i64.into()]),
                ("DELETE FROM items WHERE id = ?".into(), vec![1i64.into()]),
                ("items".into(), vec![1i64.into()]),
                ("events".into(), vec!["a".into()]),
            ]
        );
    }

    #[test]
    fn upserts_keep_the_last_row_per_key_and_inserts_keep_every_row() {
        let mut b = WriteBatch::default();
        b.put(&ITEMS, item(1, 1));
        b.put(&ITEMS, item(1, 2));
        b.put(&EVENTS, event("a", 1));
        b.put(&EVENTS, [Value::Text("a".into()), 1i64.into(), Value::Null]);
        let steps = plan(&b, Sizing::PowersOfTwo);
        let Step::Rows { rows, .. } = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][2], Value::Int(2));
        let Step::Rows { rows, .. } = &steps[1] else {
            panic!("{steps:?}")
        };
        assert_eq!(
            rows.len(),
            2,
            "a duplicate insert is left for the database to refuse"
        );
    }

    #[test]
    fn large_groups_are_split_into_power_of_two_statements() {
        assert_eq!(
            chunks(1_000, 1_024).collect::<Vec<_>>(),
            [512, 256, 128, 64, 32, 8]
        );
        assert_eq!(chunks(2_049, 1_024).collect::<Vec<_>>(), [1_024, 1_024, 1]);
        assert_eq!(chunks(0, 1_024).count(), 0);
        assert_eq!(rows_max(&ITEMS), 1_024);
        let wide = Table {
            name: "wide",
            columns: &["c"; 200],
            key_len: 1,
            update: &[],
        };
        assert_eq!(
            rows_max(&wide),
            256,
            "65,535 / 200 = 327 parameters' worth of rows"
        );

        let mut b = WriteBatch::default();
        for id in 0..1_000 {
            b.put(&ITEMS, item(id, 1));
        }
        let sizes: Vec<usize> = plan(&b, Sizing::PowersOfTwo)
            .iter()
            .map(|s| match s {
                Step::Rows { rows, .. } => rows.len(),
                Step::Exec { .. } => 0,
            })
            .collect();
        assert_eq!(sizes, [512, 256, 128, 64, 32, 8]);
    }

    #[test]
    fn one_row_inserts_are_spelled_like_the_ports_upsert() {
        for dialect in [Dialect::Postgres, Dialect::Mysql, Dialect::Sqlite] {
            assert_eq!(
                insert_sql(dialect, &EVENTS, 1),
                upsert_sql(dialect, &EVENTS)
            );
        }
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            assert_eq!(insert_sql(dialect, &ITEMS, 1), upsert_sql(dialect, &ITEMS));
        }
    }

    #[test]
    fn mysql_upserts_refuse_a_match_on_another_unique_key() {
        assert_eq!(
            insert_sql(Dialect::Mysql, &ITEMS, 1),
            "INSERT INTO `items` (`id`, `kind`, `qty`) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE `id` = IF(`id` = VALUES(`id`), `id`, NULL), \
             `qty` = VALUES(`qty`)"
        );
        let pair = Table {
            name: "pair",
            columns: &["a", "b", "v"],
            key_len: 2,
            update: &["v"],
        };
        assert!(insert_sql(Dialect::Mysql, &pair, 1)
            .contains("`a` = IF(`a` = VALUES(`a`) AND `b` = VALUES(`b`), `a`, NULL)"));
    }

    #[test]
    fn postgres_takes_any_number_of_rows_as_one_json_parameter() {
        let mut b = WriteBatch::default();
        for id in 0..1_500 {
            b.put(&ITEMS, item(id, 1));
        }
        let sizes: Vec<usize> = plan(&b, Sizing::OneParameter)
            .iter()
            .map(|s| match s {
                Step::Rows { rows, .. } => rows.len(),
                Step::Exec { .. } => 0,
            })
            .collect();
        assert_eq!(sizes, vec![ROWS_MAX, 1_500 - ROWS_MAX]);
        assert_eq!(
            json_insert_sql(&EVENTS),
            "INSERT INTO \"events\" (\"stream\", \"n\", \"body\") SELECT \"stream\", \"n\", \"body\" \
             FROM json_populate_recordset(NULL::\"events\", $1::json)"
        );
        assert!(json_insert_sql(&ITEMS)
            .ends_with(" ON CONFLICT (\"id\") DO UPDATE SET \"qty\" = excluded.\"qty\""));
    }

    #[test]
    fn json_rows_escape_text_and_keep_integers_exact() {
        let row = [
            Value::Static("a\"b"),
            Value::Int(i64::MAX),
            Value::Text("line\nbreak \\ ' quote".into()),
        ];
        let json = json_rows(
            &EVENTS,
            &[&row, &[Value::Null, Value::Int(-1), Value::Null]],
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([
                {"stream": "a\"b", "n": i64::MAX, "body": "line\nbreak \\ ' quote"},
                {"stream": null, "n": -1, "body": null},
            ])
        );
        assert!(
            json.contains(&i64::MAX.to_string()),
            "integers are written exactly"
        );
    }

    #[test]
    fn multi_row_inserts_number_their_placeholders() {
        assert_eq!(
            insert_sql(Dialect::Postgres, &EVENTS, 2),
            "INSERT INTO \"events\" (\"stream\", \"n\", \"body\") VALUES ($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(
            insert_sql(Dialect::Mysql, &EVENTS, 2),
            "INSERT INTO `events` (`stream`, `n`, `body`) VALUES (?, ?, ?), (?, ?, ?)"
        );
    }
}
