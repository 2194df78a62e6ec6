using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// The group commit's instruments, on a Meter named <c>Treaty</c> like the coordinator's (an
/// OpenTelemetry <c>AddMeter("Treaty")</c> collects both). Static: the store is built without a
/// container as often as with one, and a meter per store would repeat the same instruments.
/// </summary>
internal static class StoreMetrics
{
    public static readonly Meter Meter = new("Treaty");

    /// <summary>Writes committed together (one fsync for all of them).</summary>
    public static readonly Histogram<int> BatchSize = Meter.CreateHistogram<int>(
        "treaty.store.batch.size", unit: "{write}", description: "Writes per group commit (one fsync each)");

    /// <summary>From BEGIN to the end of COMMIT (the writes and the fsync).</summary>
    public static readonly Histogram<double> CommitDuration = Meter.CreateHistogram<double>(
        "treaty.store.commit.duration", unit: "ms", description: "Time to apply and commit one batch, fsync included");

    private static readonly KeyValuePair<string, object?> Store = new("store", "sqlite");

    public static void Committed(int size, long startedTimestamp)
    {
        BatchSize.Record(size, Store);
        CommitDuration.Record(Stopwatch.GetElapsedTime(startedTimestamp).TotalMilliseconds, Store);
    }
}
