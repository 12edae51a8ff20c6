//! Files end to end: JSON-lines input, a keyed count, JSON-lines output in parallel, and a
//! malformed input line failing the job with its file and line.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use eddy::connectors::file::{FileFormat, FileSink, FileSource};
use eddy::layers::core::key_group::{assign_to_key_group, subtask_for_key_group};
use eddy::prelude::*;
use serde::{Deserialize, Serialize};

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "eddy-files-end-to-end-{}-{test}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Click {
    user: String,
    page: String,
}

const USERS: [&str; 7] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];

/// Click `i`: users with very different click counts.
fn click(i: u64) -> Click {
    let user = match i % 4 {
        0 => USERS[0],
        _ => USERS[((i * 5 + i / 7) % 7) as usize],
    };
    Click {
        user: user.to_string(),
        page: format!("/page/{}", i % 13),
    }
}

fn json_line(click: &Click) -> String {
    format!(
        "{{\"user\":\"{}\",\"page\":\"{}\"}}\n",
        click.user, click.page
    )
}

/// Writes clicks `range` as JSON lines to `path`.
fn write_clicks(path: &Path, range: std::ops::Range<u64>) {
    let text: String = range.map(|i| json_line(&click(i))).collect();
    fs::write(path, text).unwrap();
}

fn expected_counts(range: std::ops::Range<u64>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for i in range {
        *counts.entry(click(i).user).or_insert(0) += 1;
    }
    counts
}

/// Counts clicks per user; emits `(user, count so far)`.
#[derive(Clone)]
struct CountClicks;

impl KeyedProcessFunction for CountClicks {
    type Key = String;
    type In = Click;
    type Out = (String, u64);
    type State = ValueState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, String>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("clicks"))
    }

    fn process_element(
        &mut self,
        count: &mut Self::State,
        _click: Click,
        ctx: &mut Context<'_, String>,
        out: &mut Collector<'_, (String, u64)>,
    ) -> Result<()> {
        let n = count.value()?.unwrap_or(0) + 1;
        count.update(n)?;
        out.collect((ctx.current_key().clone(), n));
        Ok(())
    }
}

/// Parses a line `["user",count]` as the sink writes a `(String, u64)`.
fn parse_count_line(line: &str) -> (String, u64) {
    let inner = line
        .strip_prefix("[\"")
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a [\"user\",count] line: {line:?}"));
    let (user, count) = inner
        .rsplit_once("\",")
        .unwrap_or_else(|| panic!("no count in {line:?}"));
    (user.to_string(), count.parse().unwrap())
}

/// Runs read -> key_by(user) -> count -> write at parallelism 2; returns the output dir.
fn count_clicks(input: &Path, output: &Path) -> JobResult {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source_named("clicks", FileSource::<Click>::json_lines(input))
        .key_by(|click: &Click| click.user.clone())
        .process_named("count", CountClicks)
        .sink_named("counts", FileSink::json_lines(output));
    env.execute("click-counts").unwrap()
}

/// The lines of every part file, by subtask.
fn read_parts(output: &Path) -> BTreeMap<usize, Vec<(String, u64)>> {
    let mut parts = BTreeMap::new();
    for subtask in 0..2 {
        let path = output.join(format!("part-{subtask}.jsonl"));
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        parts.insert(subtask, text.lines().map(parse_count_line).collect());
    }
    parts
}

#[test]
fn click_counts_per_user_round_trip_through_json_lines_files() {
    const CLICKS: u64 = 2_000;
    let dir = TestDir::new("round-trip");
    let input = dir.path().join("clicks.jsonl");
    write_clicks(&input, 0..CLICKS);
    let output = dir.path().join("counts");

    let outcome = count_clicks(&input, &output);
    assert_eq!(outcome.operator("clicks").unwrap().records_out, CLICKS);
    assert_eq!(outcome.operator("count").unwrap().records_in, CLICKS);
    assert_eq!(outcome.operator("counts").unwrap().records_in, CLICKS);

    let expected = expected_counts(0..CLICKS);
    assert_eq!(expected.len(), USERS.len(), "every user clicks");
    let parts = read_parts(&output);
    assert_eq!(parts.values().map(Vec::len).sum::<usize>() as u64, CLICKS);

    let mut final_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut emitted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (subtask, lines) in &parts {
        for (user, count) in lines {
            // Sink subtask i writes what keyed subtask i emitted: the owner of the user's key.
            let owner = subtask_for_key_group(128, 2, assign_to_key_group(user, 128));
            assert_eq!(*subtask, owner, "{user} written by subtask {subtask}");
            // Within one part file, a user's counts are in the order they were emitted.
            let last = final_counts.entry(user.clone()).or_insert(0);
            assert_eq!(*count, *last + 1, "{user}'s counts in part-{subtask}");
            *last = *count;
            emitted.entry(user.clone()).or_default().push(*count);
        }
    }
    assert_eq!(final_counts, expected);
    let writers: BTreeSet<usize> = parts
        .iter()
        .filter(|(_, lines)| !lines.is_empty())
        .map(|(subtask, _)| *subtask)
        .collect();
    assert_eq!(
        writers,
        BTreeSet::from([0, 1]),
        "both sink subtasks write: {final_counts:?}"
    );

    // The part files read back with a FileSource in a second job.
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let read_back = CollectSink::new();
    env.from_source(FileSource::<(String, u64)>::json_lines(&output))
        .sink(read_back.clone());
    env.execute("read-back").unwrap();
    let mut read_back = read_back.take();
    read_back.sort();
    let mut written: Vec<(String, u64)> = parts.into_values().flatten().collect();
    written.sort();
    assert_eq!(read_back, written);
}

#[test]
fn a_directory_of_input_files_is_split_between_source_subtasks() {
    let dir = TestDir::new("directory");
    let input = dir.path().join("in");
    fs::create_dir_all(&input).unwrap();
    // Three files of different sizes (files 0 and 2 go to subtask 0, file 1 to subtask 1).
    write_clicks(&input.join("a.jsonl"), 0..500);
    write_clicks(&input.join("b.jsonl"), 500..600);
    write_clicks(&input.join("c.jsonl"), 600..1_700);
    let output = dir.path().join("out");

    let outcome = count_clicks(&input, &output);
    assert_eq!(outcome.operator("clicks").unwrap().records_out, 1_700);
    let mut final_counts: BTreeMap<String, u64> = BTreeMap::new();
    for (user, count) in read_parts(&output).into_values().flatten() {
        let last = final_counts.entry(user).or_insert(0);
        *last = (*last).max(count);
    }
    assert_eq!(final_counts, expected_counts(0..1_700));
}

/// Runs the click count on `input`, which must fail; returns the error.
fn failed_click_count(input: &Path, output: &Path) -> EddyError {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source_named("clicks", FileSource::<Click>::json_lines(input))
        .key_by(|click: &Click| click.user.clone())
        .process(CountClicks)
        .sink(FileSink::json_lines(output));
    match env.execute("bad-clicks") {
        Ok(outcome) => panic!("a malformed line was accepted: {outcome:?}"),
        Err(error) => error,
    }
}

#[test]
fn a_malformed_line_3_fails_the_job_naming_file_and_line() {
    let dir = TestDir::new("malformed");
    let input = dir.path().join("clicks.jsonl");
    let text = [
        json_line(&click(0)),
        json_line(&click(1)),
        "{\"user\":\"mallory\",\"page\":\n".to_string(),
        json_line(&click(3)),
    ]
    .concat();
    fs::write(&input, text).unwrap();

    let error = failed_click_count(&input, &dir.path().join("out"));
    let message = error.to_string();
    let location = format!("{}:3", input.display());
    assert!(
        message.contains(&location),
        "{message:?} lacks {location:?}"
    );
    assert!(message.contains("operator \"clicks\""), "{message}");
    match error {
        EddyError::Job(failure) => match &failure.source {
            EddyError::Input { location: at, .. } => assert_eq!(at, &location),
            other => panic!("expected an input error, got {other:?}"),
        },
        other => panic!("expected a job failure, got {other:?}"),
    }
}

#[test]
fn a_malformed_line_after_a_blank_line_is_still_named_by_its_line_number() {
    let dir = TestDir::new("malformed-after-blank");
    let input = dir.path().join("clicks.jsonl");
    let text = [
        json_line(&click(0)),
        "\n".to_string(),
        "{\"user\":42,\"page\":\"/\"}\n".to_string(),
    ]
    .concat();
    fs::write(&input, text).unwrap();

    let message = failed_click_count(&input, &dir.path().join("out")).to_string();
    let location = format!("{}:3", input.display());
    assert!(
        message.contains(&location),
        "{message:?} lacks {location:?}"
    );
}

#[test]
fn a_single_output_file_is_written_by_a_sink_of_parallelism_1() {
    const CLICKS: u64 = 1_000;
    let dir = TestDir::new("single-file");
    let input = dir.path().join("clicks.jsonl");
    write_clicks(&input, 0..CLICKS);
    let output = dir.path().join("all-counts.jsonl");

    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(FileSource::<Click>::json_lines(&input))
        .key_by(|click: &Click| click.user.clone())
        .process(CountClicks)
        .sink_named("single", FileSink::to_file(&output, FileFormat::JsonLines))
        .set_parallelism(1);
    env.execute("single-file").unwrap();

    let text = fs::read_to_string(&output).unwrap();
    let mut final_counts: BTreeMap<String, u64> = BTreeMap::new();
    for (user, count) in text.lines().map(parse_count_line) {
        let last = final_counts.entry(user).or_insert(0);
        *last = (*last).max(count);
    }
    assert_eq!(text.lines().count() as u64, CLICKS);
    assert_eq!(final_counts, expected_counts(0..CLICKS));
}

#[test]
fn a_single_output_file_with_parallel_sink_subtasks_is_an_error_naming_the_sink() {
    let dir = TestDir::new("single-file-parallel");
    let input = dir.path().join("clicks.jsonl");
    write_clicks(&input, 0..10);
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(FileSource::<Click>::json_lines(&input))
        .sink_named(
            "single",
            FileSink::to_file(dir.path().join("out.jsonl"), FileFormat::JsonLines),
        );
    let message = match env.execute("single-file-parallel") {
        Ok(outcome) => panic!("two subtasks wrote one file: {outcome:?}"),
        Err(error) => error.to_string(),
    };
    assert!(message.contains("operator \"single\""), "{message}");
    assert!(message.contains("parallelism 1"), "{message}");
}

#[test]
fn malformed_lines_go_to_the_dead_letter_sink_and_the_job_counts_the_rest() {
    let dir = TestDir::new("dead-letters");
    let input = dir.path().join("clicks.jsonl");
    let mut lines: Vec<String> = (0..20).map(|i| json_line(&click(i))).collect();
    lines[2] = "{\"user\":\"mallory\",\"page\":\n".to_string();
    lines[9] = "not json at all\n".to_string();
    fs::write(&input, lines.concat()).unwrap();
    let output = dir.path().join("out");

    let dead_letters = CollectSink::new();
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(FileSource::<Click>::json_lines(&input).with_dead_letter(dead_letters.clone()))
        .key_by(|click: &Click| click.user.clone())
        .process(CountClicks)
        .sink(FileSink::json_lines(&output));
    let outcome = env.execute("dead-letters").unwrap();
    assert_eq!(outcome.operator("source").unwrap().records_out, 18);

    let mut letters: Vec<String> = dead_letters
        .take()
        .into_iter()
        .map(|l| l.location)
        .collect();
    letters.sort();
    let at = |line: u64| format!("{}:{line}", input.display());
    assert_eq!(letters, vec![at(10), at(3)]);

    let mut final_counts: BTreeMap<String, u64> = BTreeMap::new();
    for (user, count) in read_parts(&output).into_values().flatten() {
        let last = final_counts.entry(user).or_insert(0);
        *last = (*last).max(count);
    }
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for i in (0..20).filter(|i| *i != 2 && *i != 9) {
        *expected.entry(click(i).user).or_insert(0) += 1;
    }
    assert_eq!(final_counts, expected);
}
