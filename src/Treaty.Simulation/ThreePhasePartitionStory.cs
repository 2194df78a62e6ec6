using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Treaty.Core.Model;
using Treaty.Simulation.Harness;

namespace Treaty.Simulation;

/// <summary>
/// The story the 3PC partition mode exists to tell (Skeen's 3PC buys non-blocking with atomicity
/// under partitions): the first seed where a participant cut off from the coordinator commits on
/// its own timeout while the coordinator aborts the others, with the lines of the trace that tell it.
/// </summary>
/// <param name="Seed">The seed (partition mode).</param>
/// <param name="Outcome">The mixed transaction: its gid and which branches committed.</param>
/// <param name="Replay">The command that replays the seed with its full trace.</param>
/// <param name="Timeline">The trace lines <see cref="Shows"/> keeps for the transaction, in order.</param>
/// <param name="TraceHash">The hash of the full trace of the replay that produced <paramref name="Timeline"/>.</param>
/// <param name="SearchTraceHash">The hash of the same seed's trace in the search run (a separate execution, without the full trace kept).</param>
/// <param name="SeedsTried">How many seeds the search ran, this one included.</param>
/// <param name="Elapsed">The wall-clock time of the search and the replay.</param>
internal sealed partial record ThreePhasePartitionStory(
    int Seed,
    MixedOutcome Outcome,
    string Replay,
    IReadOnlyList<string> Timeline,
    ulong TraceHash,
    ulong SearchTraceHash,
    int SeedsTried,
    TimeSpan Elapsed)
{
    /// <summary>Whether the two executions of the seed wrote the same trace.</summary>
    public bool Deterministic => TraceHash == SearchTraceHash;

    /// <summary>
    /// Runs the seeds <paramref name="fromSeed"/>, <paramref name="fromSeed"/> + 1, … in the
    /// partition mode, one after the other, until one ends with a mixed 3PC outcome, then replays it
    /// keeping its full trace. Null when none of <paramref name="maxSeeds"/> seeds does.
    /// </summary>
    public static ThreePhasePartitionStory? FindFirst(int fromSeed, int maxSeeds, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(fromSeed);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxSeeds);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxSeeds, int.MaxValue - fromSeed);
        var started = Stopwatch.GetTimestamp();
        for (var tried = 1; tried <= maxSeeds; tried++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var seed = fromSeed + tried - 1;
            var search = SimulationRun.Execute(Options(seed));
            if (search.Mixed.FirstOrDefault(m => m.Protocol == Protocol.ThreePhaseCommit) is not { } mixed)
            {
                continue;
            }

            var replay = SimulationRun.Execute(Options(seed) with { KeepFullTrace = true });
            return new ThreePhasePartitionStory(
                seed,
                mixed,
                replay.Replay,
                [.. replay.FullTrace.Where(line => Shows(line, mixed.Gid))],
                replay.TraceHash,
                search.TraceHash,
                tried,
                Stopwatch.GetElapsedTime(started));
        }

        return null;
    }

    /// <summary>
    /// Whether a trace line belongs to the story of <paramref name="gid"/>: its decisions, what its
    /// participants did, their in-doubt decisions, the partitions and crashes — not every retry.
    /// </summary>
    public static bool Shows(string line, string gid)
    {
        static bool Has(string line, string text) => line.Contains(text, StringComparison.Ordinal);
        if (Has(line, "PARTITION") || Has(line, "healed") || Has(line, "CRASH (coordinator)") || Has(line, "MIXED"))
        {
            return true;
        }

        if (!Has(line, $" {gid} ") && !Has(line, $" {gid}.") && !Has(line, $" {gid}:"))
        {
            return false;
        }

        return (Has(line, " -> ") && !Has(line, "-> Wait"))
            || Has(line, "phase (") || Has(line, "aborting (") || Has(line, "committing (") || Has(line, "finished ")
            || Has(line, "resolved locally") || Has(line, "checkout ") || Has(line, "LOST");
    }

    /// <summary>
    /// <paramref name="lines"/> with each run of consecutive lines that differ only in their time
    /// and their call or query number (a participant answering the same retried call again and
    /// again) folded into its first line, which then ends with how many there were and the time of
    /// the last: a story that fits on a screen.
    /// </summary>
    public static IReadOnlyList<string> Condense(IReadOnlyList<string> lines)
    {
        var condensed = new List<string>();
        var i = 0;
        while (i < lines.Count)
        {
            var shape = Shape(lines[i]);
            var end = i + 1;
            while (end < lines.Count && Shape(lines[end]) == shape)
            {
                end++;
            }

            condensed.Add(end - i == 1
                ? lines[i]
                : string.Create(CultureInfo.InvariantCulture, $"{lines[i].TrimEnd()} (×{end - i}, the last at {Seconds(lines[end - 1])} s)"));
            i = end;
        }

        return condensed;
    }

    private static SimOptions Options(int seed) => new(seed, Mode: SimMode.Partition);

    /// <summary>A trace line starts with its virtual time (<c>SimScheduler.Format</c>), then the node.</summary>
    private static string Time(string line)
    {
        var trimmed = line.TrimStart();
        var space = trimmed.IndexOf(' ', StringComparison.Ordinal);
        return space < 0 ? trimmed : trimmed[..space];
    }

    private static string Seconds(string line) =>
        double.TryParse(Time(line), NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) ? seconds.ToString("0.000", CultureInfo.InvariantCulture) : Time(line);

    private static string Shape(string line) => CallNumber().Replace(line.TrimStart()[Time(line).Length..], "#").TrimEnd();

    [GeneratedRegex(@"(?<= )[cq]\d+(?= )", RegexOptions.CultureInvariant)]
    private static partial Regex CallNumber();
}
