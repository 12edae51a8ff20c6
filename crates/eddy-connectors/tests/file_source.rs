//! `FileSource`: splitting, directories, blank lines, malformed input and dead letters.

use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

use eddy_connectors::file::{DeadLetter, FileFormat, FileSink, FileSource};
use eddy_connectors::CollectSink;
use eddy_core::{EddyError, Result};
use eddy_runtime::{Source, SourceContext, SourceReader, SourceStatus};
use serde::{Deserialize, Serialize};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    value: i64,
}

fn reading(sensor: &str, value: i64) -> Reading {
    Reading {
        sensor: sensor.into(),
        value,
    }
}

fn json(sensor: &str, value: i64) -> String {
    format!("{{\"sensor\":\"{sensor}\",\"value\":{value}}}\n")
}

fn write(dir: &Path, name: &str, content: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, content)?;
    Ok(path)
}

/// Everything subtask `subtask` of `parallelism` reads, polling 2 records at a time.
fn read_subtask<S: Source>(source: &S, subtask: usize, parallelism: usize) -> Result<Vec<S::Item>> {
    let mut reader = source.create_reader(SourceContext {
        subtask,
        parallelism,
    })?;
    let mut out = Vec::new();
    loop {
        let before = out.len();
        let status = reader.poll(&mut out, 2)?;
        assert!(
            out.len() - before <= 2,
            "poll returned more than max records"
        );
        if status == SourceStatus::Finished {
            return Ok(out);
        }
    }
}

fn read_all<S: Source>(source: &S) -> Result<Vec<S::Item>> {
    read_subtask(source, 0, 1)
}

/// The error of a read that must fail.
fn read_error<S: Source>(source: &S) -> EddyError
where
    S::Item: Debug,
{
    match read_all(source) {
        Ok(records) => panic!("expected an error, read {records:?}"),
        Err(error) => error,
    }
}

#[test]
fn three_files_are_split_round_robin_between_two_subtasks() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for name in ["a", "b", "c"] {
        paths.push(write(dir.path(), &format!("{name}.jsonl"), &json(name, 1))?);
    }
    let source = FileSource::<Reading>::new(paths.clone(), FileFormat::JsonLines);
    assert_eq!(source.split(0, 2)?, [paths[0].clone(), paths[2].clone()]);
    assert_eq!(source.split(1, 2)?, [paths[1].clone()]);
    assert_eq!(
        read_subtask(&source, 0, 2)?,
        [reading("a", 1), reading("c", 1)]
    );
    assert_eq!(read_subtask(&source, 1, 2)?, [reading("b", 1)]);
    Ok(())
}

#[test]
fn directory_input_is_read_in_name_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "2.jsonl", &json("two", 2))?;
    write(dir.path(), "10.jsonl", &json("ten", 10))?;
    write(dir.path(), "1.jsonl", &json("one", 1))?;
    fs::create_dir(dir.path().join("0-subdirectory"))?;
    let source = FileSource::<Reading>::json_lines(dir.path());
    let sensors: Vec<_> = read_all(&source)?.into_iter().map(|r| r.sensor).collect();
    assert_eq!(sensors, ["one", "ten", "two"]);
    Ok(())
}

#[test]
fn blank_lines_are_skipped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let content = format!("\n{}   \n\r\n{}", json("a", 1), json("b", 2).trim_end());
    let path = write(dir.path(), "blank.jsonl", &content)?;
    let records = read_all(&FileSource::<Reading>::json_lines(path))?;
    assert_eq!(records, [reading("a", 1), reading("b", 2)]);
    Ok(())
}

#[test]
fn malformed_json_line_is_an_input_error_naming_file_and_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let content = format!("{}\n{{\"sensor\":\"b\",\"value\":\"x\"}}\n", json("a", 1));
    let path = write(dir.path(), "bad.jsonl", &content)?;
    let error = read_error(&FileSource::<Reading>::json_lines(&path));
    assert!(matches!(error, EddyError::Input { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("{}:3", path.display())),
        "{message}"
    );
    assert!(message.contains("invalid type"), "{message}");
    Ok(())
}

#[test]
fn malformed_csv_line_is_an_input_error_naming_file_and_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(
        dir.path(),
        "bad.csv",
        "sensor,value\na,1\nb,not-a-number\nc,3\n",
    )?;
    let error = read_error(&FileSource::<Reading>::csv(&path));
    assert!(matches!(error, EddyError::Input { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("{}:3", path.display())),
        "{message}"
    );
    Ok(())
}

#[test]
fn csv_line_numbers_count_blank_lines_crlf_and_quoted_newlines() -> TestResult {
    let dir = tempfile::tempdir()?;
    let content = "sensor,value\r\na,1\r\n\r\n\"multi\nline\",2\r\nb,1,extra\r\n";
    let path = write(dir.path(), "crlf.csv", content)?;
    let message = read_error(&FileSource::<Reading>::csv(&path)).to_string();
    assert!(
        message.contains(&format!("{}:6:", path.display())),
        "{message}"
    );
    Ok(())
}

#[test]
fn dead_letter_sink_receives_bad_lines_and_good_lines_come_through() -> TestResult {
    let dir = tempfile::tempdir()?;
    let content = format!("{}not json\n{}", json("a", 1), json("b", 2));
    let path = write(dir.path(), "mixed.jsonl", &content)?;
    let dead_letters = CollectSink::<DeadLetter>::new();
    let source = FileSource::<Reading>::json_lines(&path).with_dead_letter(dead_letters.clone());
    assert_eq!(read_all(&source)?, [reading("a", 1), reading("b", 2)]);
    let letters = dead_letters.take();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].location, format!("{}:2", path.display()));
    assert_eq!(letters[0].line, "not json");
    assert!(!letters[0].reason.is_empty());
    Ok(())
}

#[test]
fn csv_dead_letters_keep_the_record_text() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "mixed.csv", "sensor,value\na,1\nb,x\nc\nd,4\n")?;
    let dead_letters = CollectSink::<DeadLetter>::new();
    let source = FileSource::<Reading>::csv(&path).with_dead_letter(dead_letters.clone());
    assert_eq!(read_all(&source)?, [reading("a", 1), reading("d", 4)]);
    let letters: Vec<_> = dead_letters
        .take()
        .into_iter()
        .map(|letter| (letter.location, letter.line))
        .collect();
    let name = path.display();
    let expected = [(format!("{name}:3"), "b,x"), (format!("{name}:4"), "c")];
    assert_eq!(
        letters,
        expected.map(|(location, line)| (location, line.to_string()))
    );
    Ok(())
}

#[test]
fn dead_letters_can_go_to_a_file_sink_per_reader() -> TestResult {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "a.jsonl", &format!("{}{{oops\n", json("a", 1)))?;
    write(dir.path(), "b.jsonl", "[]\n")?;
    let rejected = tempfile::tempdir()?;
    let source =
        FileSource::<Reading>::json_lines(dir.path())
            .with_dead_letter(FileSink::<DeadLetter>::json_lines(rejected.path()));
    assert_eq!(read_subtask(&source, 0, 2)?, [reading("a", 1)]);
    assert_eq!(read_subtask(&source, 1, 2)?, []);
    let reread = FileSource::<DeadLetter>::json_lines(rejected.path());
    let lines: Vec<_> = read_all(&reread)?.into_iter().map(|l| l.line).collect();
    assert_eq!(lines, ["{oops", "[]"]);
    Ok(())
}

#[test]
fn csv_without_header_maps_fields_by_position() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "plain.csv", "a,1\nb,2\n")?;
    let format = FileFormat::Csv { has_header: false };
    let records = read_all(&FileSource::<Reading>::new([path], format))?;
    assert_eq!(records, [reading("a", 1), reading("b", 2)]);
    Ok(())
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("missing.jsonl");
    let error = read_error(&FileSource::<Reading>::json_lines(&path));
    match &error {
        EddyError::Io { path: failed, .. } => assert_eq!(failed, &path),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(error.to_string().contains(&path.display().to_string()));
    Ok(())
}
