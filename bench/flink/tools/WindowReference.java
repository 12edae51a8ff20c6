/**
 * Expected output sizes of W5 and W6 (see src/anchor/KeyedStateBench.java), computed
 * sequentially without Flink. Event-time windows make the Flink output independent of
 * parallelism and scheduling, so `emitted` of a run must equal these numbers.
 *
 *   java tools/WindowReference.java [--n 20000000] [--k 1000000] [--seed 42] [--events-per-ms 100]
 *
 * Prints, per workload, the number of windows/sessions (= records emitted), the number of events
 * and the sum of all amounts (equal to the sum over all emitted sums).
 */
public final class WindowReference {
    static final long GOLDEN = 0x9E3779B97F4A7C15L;
    static final long T0 = 1_700_000_000_000L;
    static final long WINDOW_MS = 60_000L;
    static final long GAP_MS = 10_000L;

    static long mix64(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    public static void main(String[] args) {
        long n = 20_000_000L, k = 1_000_000L, seed = 42, epm = 100;
        for (int i = 0; i < args.length; i += 2) {
            long v = Long.parseLong(args[i + 1]);
            switch (args[i]) {
                case "--n": n = v; break;
                case "--k": k = v; break;
                case "--seed": seed = v; break;
                case "--events-per-ms": epm = v; break;
                default: throw new IllegalArgumentException(args[i]);
            }
        }
        long[] lastWindow = new long[(int) k]; // W5: start of the customer's current window
        long[] lastTs = new long[(int) k]; // W6: event time of the customer's previous event
        java.util.Arrays.fill(lastWindow, Long.MIN_VALUE);
        java.util.Arrays.fill(lastTs, Long.MIN_VALUE);
        long windows = 0, sessions = 0, exactGap = 0, amountSum = 0, maxSession = 0;
        long[] sessionLen = new long[(int) k];
        for (long i = 0; i < n; i++) {
            long base = seed + (2 * i) * GOLDEN;
            int c = (int) Long.remainderUnsigned(mix64(base + GOLDEN), k);
            long amount = 1 + Long.remainderUnsigned(mix64(base + 2 * GOLDEN), 100_000L);
            amountSum += amount;
            // W5: tumbling, epoch-aligned 1-minute windows on T0 + i
            long w = Math.floorDiv(T0 + i, WINDOW_MS) * WINDOW_MS;
            if (lastWindow[c] != w) { lastWindow[c] = w; windows++; }
            // W6: sessions on T0 + i / epm; Flink merges [t, t+gap) windows when they touch,
            // so an event joins the session if it is at most GAP_MS after the previous one.
            long t = T0 + i / epm;
            if (lastTs[c] == Long.MIN_VALUE || t - lastTs[c] > GAP_MS) {
                sessions++;
                sessionLen[c] = 1;
            } else {
                if (t - lastTs[c] == GAP_MS) exactGap++;
                sessionLen[c]++;
            }
            maxSession = Math.max(maxSession, sessionLen[c]);
            lastTs[c] = t;
        }
        long customers = 0;
        for (long x : lastTs) if (x != Long.MIN_VALUE) customers++;
        System.out.printf("N=%d K=%d seed=%d events_per_ms=%d customers_seen=%d amount_sum=%d%n",
                n, k, seed, epm, customers, amountSum);
        System.out.printf("W5 windows_emitted=%d events_per_window=%.3f%n",
                windows, (double) n / windows);
        System.out.printf("W6 sessions_emitted=%d events_per_session=%.3f max_session_events=%d"
                + " joins_at_exactly_gap=%d%n", sessions, (double) n / sessions, maxSession, exactGap);
    }
}
