using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Treaty.Storage;

/// <summary>
/// The stores' write instruments, on a Meter named <c>Treaty</c> like the coordinator's (an
/// OpenTelemetry <c>AddMeter("Treaty")</c> collects them all). Static: a store is built without a
/// container as often as with one, and a meter per store would repeat the same instruments.
/// Compiled into each store (a linked file), so both record the same names, units and tags; the
/// <c>store</c> tag says which one (<see cref="Sqlite"/>, <see cref="PostgreSql"/>).
/// </summary>
internal static class StoreMetrics
{
    /// <summary>The <c>store</c> tag of the SQLite store.</summary>
    public const string Sqlite = "sqlite";

    /// <summary>The <c>store</c> tag of the PostgreSQL store.</summary>
    public const string PostgreSql = "postgresql";

    public static readonly Meter Meter = new("Treaty");

    /// <summary>
    /// Writes committed together: SQLite's group commit (one fsync for all of them); 1 for each
    /// PostgreSQL write (one autocommitted statement, one round trip).
    /// </summary>
    public static readonly Histogram<int> BatchSize = Meter.CreateHistogram<int>(
        "treaty.store.batch.size", unit: "{write}", description: "Writes per commit (one fsync each)");

    /// <summary>SQLite: from BEGIN to the end of COMMIT (the writes and the fsync). PostgreSQL: the statement's round trip.</summary>
    public static readonly Histogram<double> CommitDuration = Meter.CreateHistogram<double>(
        "treaty.store.commit.duration", unit: "ms", description: "Time to apply and commit one batch, fsync included");

    /// <summary>Records one commit of <paramref name="size"/> writes started at <paramref name="startedTimestamp"/> (a <see cref="Stopwatch"/> timestamp).</summary>
    public static void Committed(string store, int size, long startedTimestamp)
    {
        var tag = new KeyValuePair<string, object?>("store", store);
        BatchSize.Record(size, tag);
        CommitDuration.Record(Stopwatch.GetElapsedTime(startedTimestamp).TotalMilliseconds, tag);
    }
}
