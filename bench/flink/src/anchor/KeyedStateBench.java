package anchor;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.api.java.typeutils.PojoTypeInfo;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.MemorySize;
import org.apache.flink.configuration.PipelineOptions;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.configuration.TaskManagerOptions;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.connector.datagen.source.GeneratorFunction;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.KeyedStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.EventTimeSessionWindows;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;

import java.time.Duration;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Keyed-state throughput anchor for Apache Flink 2.x, run in an embedded MiniCluster.
 *
 * <p>Pipeline: DataGeneratorSource(N deterministic Transactions) -> keyBy(customerId) ->
 * KeyedProcessFunction (workload W0..W3) or event-time window + aggregate (W5, W6) -> counting
 * discard sink.
 *
 * <p>Stream definition (reproducible in any language): event i (0 <= i < N) consumes outputs 2i
 * and 2i+1 of the splitmix64 generator seeded with SEED, i.e. r0 = mix(SEED + (2i+1)*GOLDEN),
 * r1 = mix(SEED + (2i+2)*GOLDEN) (64-bit wrapping arithmetic), and is
 * customerId = r0 mod K (unsigned), transactionId = i, amount = 1 + (r1 mod 100000) (unsigned;
 * cents), timestamp = 1_700_000_000_000 + i (ms). Flink's NumberSequenceSource cuts [0, N) into
 * `parallelism` contiguous ranges; each source subtask emits one range in ascending i.
 *
 * <p>Event-time window workloads (added in the Eddy project copy; generator unchanged, the
 * Transaction.timestamp field is still T0 + i). The event time is set by the source's
 * WatermarkStrategy.forMonotonousTimestamps() timestamp assigner, from i = transactionId:
 *
 * <ul>
 *   <li>W5 tumbling 1-min windows: eventTime = T0 + i (ms), i.e. 1 event per ms, 60000 events
 *       per window. Windows are aligned to epoch 0: start = floor(t / 60000) * 60000. T0 mod
 *       60000 = 20000, so the first window holds i in [0, 40000) and then every 60000 (N = 20M:
 *       334 windows). Sum of amount per (customer, window); emits (customer, window end
 *       (exclusive, epoch ms), sum).
 *   <li>W6 session windows, gap 10 s: eventTime = T0 + floor(i / EPM) with EPM = 100 events per
 *       ms (--events-per-ms). A customer appears with probability 1/K per event, so the gap
 *       between its consecutive events is ~ geometric with mean K events = K/EPM ms = 10 s for
 *       K = 1M: P(next event of the customer within the gap) = 1 - e^-1 = 63 %, so sessions hold
 *       up to e = 2.7 events on average (N = 20M: 7,623,272 sessions, 2.62 events each, at most
 *       38; the stream spans 200 s of event time). Two events of one customer are
 *       in the same session iff their event times differ by <= 10000 ms (Flink merges [t, t+gap)
 *       windows that touch: TimeWindow.intersects is inclusive). Emits (customer, session end =
 *       last event time + gap, sum, count). Race: at a difference of exactly 10000 ms the first
 *       session can fire before the second event arrives, if the periodic watermark t+gap-1 is
 *       emitted between two events of the same ms; then emitted is 1 higher (rare: 0 or 2 of
 *       726 such pairs for N = 20M).
 * </ul>
 *
 * <p>Per source split (= per contiguous range of i) event time is non-decreasing, so nothing is
 * late. With parallelism p > 1 the window operator's watermark is the minimum over the p source
 * splits, i.e. it follows the split with the lowest range: windows of the higher ranges stay in
 * state until that split has finished (with p = 2 half of all windows are buffered until the
 * end). The output (the set of windows and their contents) does not depend on p (except for
 * the W6 race above); tools/WindowReference.java computes the expected number of records.
 */
public final class KeyedStateBench {

    // ---------------------------------------------------------------- data type

    /** Flink POJO (public fields + no-arg ctor), serialized by PojoSerializer, never Kryo. */
    public static class Transaction {
        public long customerId;
        public long transactionId;
        public long amount; // cents
        public long timestamp; // epoch millis

        public Transaction() {}

        public Transaction(long customerId, long transactionId, long amount, long timestamp) {
            this.customerId = customerId;
            this.transactionId = transactionId;
            this.amount = amount;
            this.timestamp = timestamp;
        }
    }

    // ---------------------------------------------------------------- generator

    static final long GOLDEN = 0x9E3779B97F4A7C15L;
    static final long T0 = 1_700_000_000_000L;

    static long mix64(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** Event i as a pure function of (seed, K, i): counter-based splitmix64. */
    static Transaction event(long seed, long k, long i) {
        long base = seed + (2 * i) * GOLDEN;
        long r0 = mix64(base + GOLDEN);
        long r1 = mix64(base + 2 * GOLDEN);
        return new Transaction(
                Long.remainderUnsigned(r0, k), i, 1 + Long.remainderUnsigned(r1, 100_000L), T0 + i);
    }

    static final class TxGenerator implements GeneratorFunction<Long, Transaction> {
        private final long seed;
        private final long k;

        TxGenerator(long seed, long k) {
            this.seed = seed;
            this.k = k;
        }

        @Override
        public Transaction map(Long index) {
            return event(seed, k, index);
        }
    }

    static final class CustomerKey implements KeySelector<Transaction, Long> {
        @Override
        public Long getKey(Transaction t) {
            return t.customerId;
        }
    }

    // ---------------------------------------------------------------- in-JVM stats
    // The MiniCluster runs in this JVM and the job classes come from the application class path,
    // so plain statics are shared between the tasks and main().

    static final class Stats {
        static final AtomicLong firstElementNanos = new AtomicLong(Long.MAX_VALUE);
        static final AtomicLong endOfInputNanos = new AtomicLong(0);
        static final AtomicLong processed = new AtomicLong();
        static final AtomicLong sinkCount = new AtomicLong();
        static final AtomicLong lastCheckpointId = new AtomicLong();

        static void markFirst() {
            firstElementNanos.accumulateAndGet(System.nanoTime(), Math::min);
        }
    }

    /** Common bookkeeping for the measured operators (not per-event except one branch). */
    abstract static class Measured<O> extends KeyedProcessFunction<Long, Transaction, O>
            implements CheckpointListener {
        private transient boolean started;
        protected transient long count;

        protected final void tick() {
            if (!started) {
                started = true;
                Stats.markFirst();
            }
            count++;
        }

        @Override
        public void close() throws Exception {
            Stats.processed.addAndGet(count);
            super.close();
        }

        @Override
        public void notifyCheckpointComplete(long checkpointId) {
            Stats.lastCheckpointId.accumulateAndGet(checkpointId, Math::max);
        }
    }

    // ---------------------------------------------------------------- workloads

    /** W0: no state at all, forwards every event. Framework baseline (source+shuffle+sink). */
    static final class W0Stateless extends Measured<Transaction> {
        @Override
        public void processElement(Transaction in, Context ctx, Collector<Transaction> out) {
            tick();
            out.collect(in);
        }
    }

    /**
     * W1: latest transaction per customer (Flink Cookbook "latest transaction" recipe). One
     * ValueState read and one ValueState write per event: the state always ends up holding the
     * transaction with the max timestamp; the incoming event is emitted when it is the new max.
     */
    static final class W1Latest extends Measured<Transaction> {
        private transient ValueState<Transaction> latest;

        @Override
        public void open(OpenContext ctx) {
            latest =
                    getRuntimeContext()
                            .getState(
                                    new ValueStateDescriptor<>(
                                            "latest", TypeInformation.of(Transaction.class)));
        }

        @Override
        public void processElement(Transaction in, Context ctx, Collector<Transaction> out)
                throws Exception {
            tick();
            Transaction cur = latest.value();
            if (cur == null || in.timestamp >= cur.timestamp) {
                latest.update(in);
                out.collect(in);
            } else {
                latest.update(cur); // forced write so every event costs exactly 1 read + 1 write
            }
        }
    }

    /**
     * W1 on the Flink 2.x asynchronous state API (State V2, requires keyBy().enableAsyncState()).
     * Same semantics as W1Latest. Meant for the ForSt backend; other backends run it through an
     * adaptor.
     */
    static final class W1LatestAsync extends Measured<Transaction> {
        private transient org.apache.flink.api.common.state.v2.ValueState<Transaction> latest;

        @Override
        public void open(OpenContext ctx) {
            latest =
                    getRuntimeContext()
                            .getState(
                                    new org.apache.flink.api.common.state.v2.ValueStateDescriptor<>(
                                            "latest", TypeInformation.of(Transaction.class)));
        }

        @Override
        public void processElement(Transaction in, Context ctx, Collector<Transaction> out) {
            tick();
            latest.asyncValue()
                    .thenAccept(
                            cur -> {
                                if (cur == null || in.timestamp >= cur.timestamp) {
                                    latest.asyncUpdate(in);
                                    out.collect(in);
                                } else {
                                    latest.asyncUpdate(cur);
                                }
                            });
        }
    }

    /**
     * W2: ListState<Transaction>.add per event; on every event with transactionId % emitEvery ==
     * 0 the whole list for that customer is read (get + iterate) and the sum of amounts emitted.
     */
    static final class W2List extends Measured<Long> {
        private final long emitEvery;
        private transient ListState<Transaction> list;

        W2List(long emitEvery) {
            this.emitEvery = emitEvery;
        }

        @Override
        public void open(OpenContext ctx) {
            list =
                    getRuntimeContext()
                            .getListState(
                                    new ListStateDescriptor<>(
                                            "history", TypeInformation.of(Transaction.class)));
        }

        @Override
        public void processElement(Transaction in, Context ctx, Collector<Long> out)
                throws Exception {
            tick();
            list.add(in);
            if (in.transactionId % emitEvery == 0) {
                long sum = 0;
                for (Transaction t : list.get()) {
                    sum += t.amount;
                }
                out.collect(sum);
            }
        }
    }

    /**
     * W3: MapState<Long,Long> per customer, map key = transactionId % 100, value = running sum of
     * amounts. One get + one put per event; emits the new value when transactionId % emitEvery ==
     * 0.
     */
    static final class W3Map extends Measured<Long> {
        private final long emitEvery;
        private transient MapState<Long, Long> sums;

        W3Map(long emitEvery) {
            this.emitEvery = emitEvery;
        }

        @Override
        public void open(OpenContext ctx) {
            sums =
                    getRuntimeContext()
                            .getMapState(new MapStateDescriptor<>("sums", Types.LONG, Types.LONG));
        }

        @Override
        public void processElement(Transaction in, Context ctx, Collector<Long> out)
                throws Exception {
            tick();
            long mk = in.transactionId % 100;
            Long v = sums.get(mk);
            long nv = (v == null ? 0L : v) + in.amount;
            sums.put(mk, nv);
            if (in.transactionId % emitEvery == 0) {
                out.collect(nv);
            }
        }
    }

    // ---------------------------------------------------------------- window workloads (W5, W6)

    static final long WINDOW_MS = 60_000L; // W5 tumbling window size
    static final long SESSION_GAP_MS = 10_000L; // W6 session gap

    /**
     * Base for the window aggregate functions: counts the events it adds (plain field, like
     * Measured.tick()) and marks the first one. Each window-operator subtask deserializes its own
     * instance; instances register themselves on first use and main() sums their counts after the
     * job has finished (AggregateFunction has no close() hook).
     */
    abstract static class CountingAgg<ACC, OUT> implements AggregateFunction<Transaction, ACC, OUT> {
        static final ConcurrentLinkedQueue<CountingAgg<?, ?>> INSTANCES =
                new ConcurrentLinkedQueue<>();
        private transient boolean started;
        transient long count;

        protected final void tick() {
            if (!started) {
                started = true;
                Stats.markFirst();
                INSTANCES.add(this);
            }
            count++;
        }

        static long totalCount() {
            long t = 0;
            for (CountingAgg<?, ?> a : INSTANCES) {
                t += a.count;
            }
            return t;
        }
    }

    /** W5 accumulator: the running sum of amounts (boxed Long, the idiomatic Flink sum). */
    static final class SumAgg extends CountingAgg<Long, Long> {
        @Override
        public Long createAccumulator() {
            return 0L;
        }

        @Override
        public Long add(Transaction in, Long acc) {
            tick();
            return acc + in.amount;
        }

        @Override
        public Long getResult(Long acc) {
            return acc;
        }

        @Override
        public Long merge(Long a, Long b) {
            return a + b;
        }
    }

    /** W5 output: (customer, window end (exclusive, epoch ms), sum of amounts). */
    static final class EmitWindowSum
            extends ProcessWindowFunction<Long, Tuple3<Long, Long, Long>, Long, TimeWindow> {
        @Override
        public void process(
                Long customer,
                Context ctx,
                Iterable<Long> sums,
                Collector<Tuple3<Long, Long, Long>> out) {
            out.collect(Tuple3.of(customer, ctx.window().getEnd(), sums.iterator().next()));
        }
    }

    /** W6 accumulator (Flink POJO): sum of amounts and number of events of one session. */
    public static class SumCount {
        public long sum;
        public long count;

        public SumCount() {}
    }

    /** W6: sum + count per session; merge() is required by merging (session) windows. */
    static final class SumCountAgg extends CountingAgg<SumCount, SumCount> {
        @Override
        public SumCount createAccumulator() {
            return new SumCount();
        }

        @Override
        public SumCount add(Transaction in, SumCount acc) {
            tick();
            acc.sum += in.amount;
            acc.count++;
            return acc;
        }

        @Override
        public SumCount getResult(SumCount acc) {
            return acc;
        }

        @Override
        public SumCount merge(SumCount a, SumCount b) {
            a.sum += b.sum;
            a.count += b.count;
            return a;
        }
    }

    /** W6 output: (customer, session end = last event time + gap (exclusive), sum, count). */
    static final class EmitSession
            extends ProcessWindowFunction<
                    SumCount, Tuple4<Long, Long, Long, Long>, Long, TimeWindow> {
        @Override
        public void process(
                Long customer,
                Context ctx,
                Iterable<SumCount> accs,
                Collector<Tuple4<Long, Long, Long, Long>> out) {
            SumCount a = accs.iterator().next();
            out.collect(Tuple4.of(customer, ctx.window().getEnd(), a.sum, a.count));
        }
    }

    // ---------------------------------------------------------------- sink

    /** Sink V2 that only counts; records the end-of-input time (flush(true)). */
    static final class CountingSink<T> implements Sink<T> {
        @Override
        public SinkWriter<T> createWriter(WriterInitContext context) {
            return new SinkWriter<T>() {
                long n;

                @Override
                public void write(T element, Context ctx) {
                    n++;
                }

                @Override
                public void flush(boolean endOfInput) {
                    if (endOfInput) {
                        Stats.endOfInputNanos.accumulateAndGet(System.nanoTime(), Math::max);
                    }
                }

                @Override
                public void close() {
                    Stats.sinkCount.addAndGet(n);
                }
            };
        }
    }

    // ---------------------------------------------------------------- main

    static Map<String, String> parseArgs(String[] args) {
        Map<String, String> m = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (!a.startsWith("--")) {
                throw new IllegalArgumentException("unexpected argument " + a);
            }
            String key = a.substring(2);
            String val;
            int eq = key.indexOf('=');
            if (eq >= 0) {
                val = key.substring(eq + 1);
                key = key.substring(0, eq);
            } else {
                val = args[++i];
            }
            m.put(key, val);
        }
        return m;
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> a = parseArgs(args);
        String workload = a.getOrDefault("workload", "w1").toLowerCase(Locale.ROOT);
        long n = Long.parseLong(a.getOrDefault("n", "20000000"));
        long k = Long.parseLong(a.getOrDefault("k", "1000000"));
        int p = Integer.parseInt(a.getOrDefault("parallelism", "2"));
        String backend = a.getOrDefault("backend", "hashmap").toLowerCase(Locale.ROOT);
        long ckptMs = Long.parseLong(a.getOrDefault("checkpoint-ms", "0"));
        String ckptDir = a.getOrDefault("checkpoint-dir", "file:///tmp/flink-anchor/checkpoints");
        boolean incremental = Boolean.parseBoolean(a.getOrDefault("incremental", "false"));
        long managedMb = Long.parseLong(a.getOrDefault("managed-mb", "4096"));
        long seed = Long.parseLong(a.getOrDefault("seed", "42"));
        long emitEvery = Long.parseLong(a.getOrDefault("emit-every", "10"));
        boolean objectReuse = Boolean.parseBoolean(a.getOrDefault("object-reuse", "false"));
        boolean asyncState = Boolean.parseBoolean(a.getOrDefault("async-state", "false"));
        String localDir = a.getOrDefault("local-dir", "/tmp/flink-anchor/local");
        long eventsPerMs = Long.parseLong(a.getOrDefault("events-per-ms", "100")); // W6 only

        Configuration conf = new Configuration();
        conf.set(StateBackendOptions.STATE_BACKEND, backend);
        conf.set(TaskManagerOptions.MANAGED_MEMORY_SIZE, MemorySize.ofMebiBytes(managedMb));
        conf.set(PipelineOptions.GENERIC_TYPES, false); // fail instead of silently using Kryo
        conf.set(PipelineOptions.OBJECT_REUSE, objectReuse);
        conf.setString("io.tmp.dirs", localDir);
        if (ckptMs > 0) {
            conf.set(CheckpointingOptions.CHECKPOINT_STORAGE, "filesystem");
            conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, ckptDir);
            conf.set(CheckpointingOptions.INCREMENTAL_CHECKPOINTS, incremental);
        }

        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(p, conf);
        if (ckptMs > 0) {
            env.enableCheckpointing(ckptMs, CheckpointingMode.EXACTLY_ONCE);
        }

        TypeInformation<Transaction> txType = TypeInformation.of(Transaction.class);
        if (!(txType instanceof PojoTypeInfo)) {
            throw new IllegalStateException("Transaction is not a Flink POJO: " + txType);
        }

        // W0-W3: no event time. W5/W6: event time from i = transactionId (see class comment),
        // monotonous per source split, watermarks generated in the source per split.
        WatermarkStrategy<Transaction> watermarks;
        switch (workload) {
            case "w5":
                watermarks =
                        WatermarkStrategy.<Transaction>forMonotonousTimestamps()
                                .withTimestampAssigner(
                                        (SerializableTimestampAssigner<Transaction>)
                                                (t, prev) -> T0 + t.transactionId);
                break;
            case "w6":
                watermarks =
                        WatermarkStrategy.<Transaction>forMonotonousTimestamps()
                                .withTimestampAssigner(
                                        (SerializableTimestampAssigner<Transaction>)
                                                (t, prev) -> T0 + t.transactionId / eventsPerMs);
                break;
            default:
                watermarks = WatermarkStrategy.noWatermarks();
        }
        DataStream<Transaction> source =
                env.fromSource(
                        new DataGeneratorSource<>(new TxGenerator(seed, k), n, txType),
                        watermarks,
                        "transactions");
        KeyedStream<Transaction, Long> keyed = source.keyBy(new CustomerKey(), Types.LONG);

        switch (workload) {
            case "w0":
                keyed.process(new W0Stateless(), txType).sinkTo(new CountingSink<>());
                break;
            case "w1":
                if (asyncState) {
                    keyed.enableAsyncState()
                            .process(new W1LatestAsync(), txType)
                            .sinkTo(new CountingSink<>());
                } else {
                    keyed.process(new W1Latest(), txType).sinkTo(new CountingSink<>());
                }
                break;
            case "w2":
                keyed.process(new W2List(emitEvery), Types.LONG).sinkTo(new CountingSink<>());
                break;
            case "w3":
                keyed.process(new W3Map(emitEvery), Types.LONG).sinkTo(new CountingSink<>());
                break;
            case "w5":
                keyed.window(TumblingEventTimeWindows.of(Duration.ofMillis(WINDOW_MS)))
                        .aggregate(
                                new SumAgg(),
                                new EmitWindowSum(),
                                Types.LONG,
                                Types.LONG,
                                Types.TUPLE(Types.LONG, Types.LONG, Types.LONG))
                        .sinkTo(new CountingSink<>());
                break;
            case "w6":
                keyed.window(EventTimeSessionWindows.withGap(Duration.ofMillis(SESSION_GAP_MS)))
                        .aggregate(
                                new SumCountAgg(),
                                new EmitSession(),
                                TypeInformation.of(SumCount.class),
                                TypeInformation.of(SumCount.class),
                                Types.TUPLE(Types.LONG, Types.LONG, Types.LONG, Types.LONG))
                        .sinkTo(new CountingSink<>());
                break;
            default:
                throw new IllegalArgumentException("unknown workload " + workload);
        }

        long t0 = System.nanoTime();
        JobExecutionResult res = env.execute("keyed-state-anchor-" + workload + "-" + backend);
        long t1 = System.nanoTime();

        double jobS = res.getNetRuntime(TimeUnit.MILLISECONDS) / 1000.0;
        double execS = (t1 - t0) / 1e9;
        long first = Stats.firstElementNanos.get();
        long end = Stats.endOfInputNanos.get();
        double procS = (first == Long.MAX_VALUE || end == 0) ? Double.NaN : (end - first) / 1e9;
        long processed = Stats.processed.get() + CountingAgg.totalCount();
        if (processed != n) {
            throw new IllegalStateException("processed " + processed + " events, expected " + n);
        }
        System.out.printf(
                Locale.ROOT,
                "RESULT workload=%s backend=%s%s parallelism=%d N=%d K=%d checkpoint_ms=%d"
                        + " incremental=%s job_s=%.3f execute_s=%.3f proc_s=%.3f"
                        + " eps_job=%.0f eps_proc=%.0f emitted=%d processed=%d"
                        + " last_checkpoint_id=%d object_reuse=%s managed_mb=%d%n",
                workload.toUpperCase(Locale.ROOT),
                backend,
                asyncState ? "+async" : "",
                p,
                n,
                k,
                ckptMs,
                ckptMs > 0 ? Boolean.toString(incremental) : "-",
                jobS,
                execS,
                procS,
                n / jobS,
                n / procS,
                Stats.sinkCount.get(),
                processed,
                Stats.lastCheckpointId.get(),
                objectReuse,
                managedMb);
    }

    private KeyedStateBench() {}
}
