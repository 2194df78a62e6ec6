using System.Globalization;
using Spectre.Console;
using Treaty.Simulation;

namespace Treaty.Cli.Experiments;

/// <summary>
/// <c>3pc-partition</c>: Skeen's 3PC is non-blocking, and the price is atomicity under partitions.
/// A participant cut off from the coordinator after it acknowledged preCommit commits on its own
/// timeout, while the coordinator, missing its acknowledgement, aborts the others.
/// </summary>
/// <remarks>
/// A partition that lands at the right moment is rare on real processes, so this experiment does
/// not use the demo's processes: it runs the deterministic simulation (the real engine and 3PC
/// machine, the participant kit's in-doubt rules) in its partition mode, seed after seed, until one
/// mixes outcomes, prints that seed's timeline, and replays it to show the run is a function of the
/// seed.
/// </remarks>
internal static class ThreePhasePartitionExperiment
{
    /// <summary>How many seeds the demo searches (the first mixed seed is 6 today; 113 of the first 2,000 mix).</summary>
    internal const int MaxSeeds = 200;

    public static Experiment Definition { get; } = new(
        "3pc-partition",
        "3PC is non-blocking, and the price is atomicity under partitions: a participant cut off from the coordinator " +
        "after preCommit commits on its own timeout while the coordinator aborts the others.",
        RunAsync);

    private static Task<ExperimentResult> RunAsync(ExperimentContext context, CancellationToken cancellationToken) =>
        Task.Run(() => Run(context.Console, fromSeed: 0, MaxSeeds, cancellationToken), cancellationToken);

    /// <summary>Searches <paramref name="maxSeeds"/> seeds from <paramref name="fromSeed"/> (the demo: <see cref="MaxSeeds"/> from 0).</summary>
    internal static ExperimentResult Run(IAnsiConsole console, int fromSeed, int maxSeeds, CancellationToken cancellationToken)
    {
        Note(console, $"simulation, 3PC partition mode: seeds {fromSeed} to {fromSeed + maxSeeds - 1}, one after the other, until a transaction mixes outcomes");
        var story = ThreePhasePartitionStory.FindFirst(fromSeed, maxSeeds, cancellationToken);
        if (story is null)
        {
            return new ExperimentResult(
                Definition.Name,
                $"no seed of {fromSeed} to {fromSeed + maxSeeds - 1} made 3PC commit on one side and abort on the other",
                [new Check("a seed where 3PC commits on one side and aborts on the other", false, $"none in {maxSeeds} seeds")]);
        }

        var (gid, committed, aborted) = (story.Outcome.Gid, story.Outcome.Committed, story.Outcome.NotCommitted);
        Note(console, $"replay it with its full trace: {story.Replay}");
        var summary = string.Create(CultureInfo.InvariantCulture,
            $"seed {story.Seed}: {gid} committed at {Names(committed)} and aborted at {Names(aborted)} under a partition (found after {story.SeedsTried} seeds in {story.Elapsed.TotalMilliseconds:0} ms)");
        var checks = new List<Check>
        {
            new(
                "a seed where 3PC commits on one side and aborts on the other",
                committed.Count > 0 && aborted.Count > 0,
                $"seed {story.Seed}, {gid}: committed {Names(committed)}, not committed {Names(aborted)}"),
            new(
                "the timeline shows the partition, the commit and the aborts",
                story.Timeline.Any(l => l.Contains("PARTITION", StringComparison.Ordinal))
                    && committed.All(b => story.Timeline.Any(l => About(l, gid, b) && l.EndsWith(" captured", StringComparison.Ordinal)))
                    && aborted.All(b => story.Timeline.Any(l => About(l, gid, b) && l.EndsWith(" released", StringComparison.Ordinal))),
                $"{story.Timeline.Count} lines"),
            new(
                $"replaying seed {story.Seed} gives the same trace",
                story.Deterministic,
                string.Create(CultureInfo.InvariantCulture, $"trace hash {story.SearchTraceHash:x16} in the search, {story.TraceHash:x16} in the replay")),
        };
        return new ExperimentResult(Definition.Name, summary, checks, Table(story));
    }

    /// <summary>A participant's line about a branch: its call (<c>tx2 payment.abort</c>) or its own decision (<c>tx2.payment resolved</c>).</summary>
    private static bool About(string line, string gid, string branch) =>
        line.Contains($" {gid} {branch}.", StringComparison.Ordinal) || line.Contains($" {gid}.{branch} ", StringComparison.Ordinal);

    private static Table Table(ThreePhasePartitionStory story)
    {
        var table = new Table().Border(TableBorder.Simple)
            .Title(Markup.Escape($"3PC under a partition: seed {story.Seed}, {story.Outcome.Gid} (simulated time)"));
        table.AddColumn(new TableColumn("at (s)").RightAligned());
        table.AddColumn("node");
        table.AddColumn("event");
        foreach (var line in ThreePhasePartitionStory.Condense(story.Timeline))
        {
            // A trace line is "<virtual seconds> <node> <text>" (the node padded to 9 characters).
            var parts = line.Split(' ', 3, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var at = parts.Length > 0 && double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds)
                ? seconds.ToString("0.000", CultureInfo.InvariantCulture)
                : parts.ElementAtOrDefault(0) ?? "";
            var text = parts.ElementAtOrDefault(2) ?? "";
            table.AddRow(new Text(at), new Text(parts.ElementAtOrDefault(1) ?? ""), new Markup(Colour(text)));
        }

        return table;
    }

    private static string Colour(string text)
    {
        var escaped = Markup.Escape(text);
        return text switch
        {
            _ when text.Contains("MIXED", StringComparison.Ordinal) => $"[red]{escaped}[/]",
            _ when text.Contains("PARTITION", StringComparison.Ordinal) || text.Contains("healed", StringComparison.Ordinal) => $"[yellow]{escaped}[/]",
            _ when text.Contains("CRASH", StringComparison.Ordinal) => $"[yellow]{escaped}[/]",
            _ when text.EndsWith(" captured", StringComparison.Ordinal) => $"[green]{escaped}[/]",
            _ => escaped,
        };
    }

    private static string Names(IReadOnlyList<string> branches) => branches.Count switch
    {
        0 => "none",
        1 => branches[0],
        _ => string.Join(", ", branches.Take(branches.Count - 1)) + " and " + branches[^1],
    };

    private static void Note(IAnsiConsole console, string text) => console.MarkupLine("[grey]" + Markup.Escape(text) + "[/]");
}
