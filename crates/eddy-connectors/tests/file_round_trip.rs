//! `FileSink` then `FileSource`: records survive a round trip through JSON lines and CSV.

use eddy_connectors::file::{FileFormat, FileSink, FileSource};
use eddy_core::{EddyError, Result};
use eddy_runtime::{Sink, SinkContext, Source, SourceContext, SourceReader, SourceStatus};
use serde::{Deserialize, Serialize};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    amount: f64,
    express: bool,
}

/// Orders whose customer names need CSV quoting.
fn orders() -> Vec<Order> {
    (0..7)
        .map(|id| Order {
            id,
            customer: format!("customer, \"{id}\""),
            amount: id as f64 * 1.25,
            express: id % 2 == 0,
        })
        .collect()
}

/// Writes `records` with two sink subtasks: even positions to subtask 0, odd ones to 1.
fn write_two_parts(sink: &FileSink<Order>, records: &[Order]) -> Result<()> {
    for subtask in 0..2 {
        let mut part = sink.clone();
        part.open(SinkContext::new(subtask, 2))?;
        for record in records.iter().skip(subtask).step_by(2) {
            part.write(record.clone())?;
        }
        part.close()?;
    }
    Ok(())
}

fn read_all(source: &FileSource<Order>) -> Result<Vec<Order>> {
    let mut reader = source.create_reader(SourceContext {
        subtask: 0,
        parallelism: 1,
    })?;
    let mut out = Vec::new();
    while reader.poll(&mut out, 3)? == SourceStatus::More {}
    Ok(out)
}

fn sorted(mut records: Vec<Order>) -> Vec<Order> {
    records.sort_by_key(|order| order.id);
    records
}

#[test]
fn json_lines_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("new").join("orders");
    write_two_parts(&FileSink::json_lines(&out), &orders())?;
    assert!(out.join("part-0.jsonl").is_file() && out.join("part-1.jsonl").is_file());
    assert_eq!(sorted(read_all(&FileSource::json_lines(&out))?), orders());
    Ok(())
}

#[test]
fn csv_round_trip_writes_one_header_per_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sink = FileSink::csv(dir.path());
    write_two_parts(&sink, &orders())?;
    let part = std::fs::read_to_string(sink.part_path(1))?;
    assert!(part.starts_with("id,customer,amount,express\n"), "{part}");
    assert_eq!(part.matches("id,customer").count(), 1);
    assert_eq!(sorted(read_all(&FileSource::csv(dir.path()))?), orders());
    Ok(())
}

#[test]
fn csv_without_header_round_trip_through_one_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("orders.csv");
    let format = FileFormat::Csv { has_header: false };
    let mut sink = FileSink::to_file(&path, format);
    sink.open(SinkContext::new(0, 1))?;
    for order in orders() {
        sink.write(order)?;
    }
    sink.close()?;
    assert_eq!(read_all(&FileSource::new([&path], format))?, orders());
    Ok(())
}

#[test]
fn single_file_sink_refuses_parallelism_above_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("one.jsonl");
    let mut sink = FileSink::<Order>::to_file(path, FileFormat::JsonLines);
    let opened = sink.open(SinkContext::new(0, 2));
    let Err(error) = opened else {
        panic!("a single-file sink opened at parallelism 2");
    };
    assert!(matches!(error, EddyError::Config(_)), "{error:?}");
    assert!(error.to_string().contains("parallelism 1"), "{error}");
    Ok(())
}
