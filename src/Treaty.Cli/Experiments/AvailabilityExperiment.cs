using System.Collections.Concurrent;
using System.Globalization;
using Spectre.Console;
using Treaty.Client;
using Treaty.Core.Contracts;

namespace Treaty.Cli.Experiments;

/// <summary>
/// <c>availability</c>: 2PC needs every participant up at the moment it votes, so with n participants
/// each up a share a of the time it commits a^n of its transactions; a saga needs each participant
/// only when its step runs, and retries forward until it is back.
/// </summary>
/// <remarks>
/// Every call finds its participant down (answering 503) with probability 1 - a, drawn from a seeded
/// hash of (seed, participant, the participant's call number): the same odds as calling, at a random
/// moment, a participant that is up a share a of the time. The draw does not depend on the clock: an
/// earlier schedule of wall-clock slots (down or up for 50 ms at a time) measured 2PC at 0.453
/// against a^10 = 0.349 once on a loaded CI machine, where how the calls fell into slots was no
/// longer independent of the schedule. The texts' a = 0.999 would need millions of transactions to
/// show; a = 0.9 shows it with a few hundred. Every transaction gets participants of its own
/// (participant ids are never reused), so the K transactions are independent trials and the
/// binomial tolerance of the check holds.
/// </remarks>
internal static class AvailabilityExperiment
{
    public static Experiment Definition { get; } = new(
        "availability",
        "2PC's availability falls as a^n with n participants (0.999^n in the texts): every participant must be up at the same moment; " +
        "a saga needs each one only when its step runs and retries forward.",
        RunAsync);

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>The experiment's knobs; <see cref="Default"/> is what the demo runs.</summary>
    /// <param name="Seed">Seeds the participants' answers.</param>
    /// <param name="Availability">a: the chance that a call finds its participant up.</param>
    /// <param name="Transactions">K: transactions per protocol and n.</param>
    /// <param name="RetryDelay">The first delay between two calls of an operation that found its participant down.</param>
    /// <param name="ParticipantCounts">The values of n.</param>
    /// <param name="Concurrency">Transactions in flight at once.</param>
    /// <param name="TwoPhaseAttempts">Attempts of each 2PC operation; 1 means a participant that is down
    /// when asked to prepare votes NO (a coordinator holding locks cannot wait for it).</param>
    internal sealed record Settings(
        int Seed,
        double Availability,
        int Transactions,
        TimeSpan RetryDelay,
        IReadOnlyList<int> ParticipantCounts,
        int Concurrency,
        int TwoPhaseAttempts)
    {
        public static Settings Default(int seed) => new(seed, 0.9, 400, TimeSpan.FromMilliseconds(50), [1, 3, 10], 8, 1);
    }

    /// <summary>One protocol's K transactions at one n.</summary>
    /// <param name="Committed">Transactions that committed.</param>
    /// <param name="Ended">Transactions that reached an outcome (committed or aborted).</param>
    /// <param name="Total">K.</param>
    /// <param name="MeanLatency">Mean time from the submit to the outcome.</param>
    /// <param name="Waited">Committed transactions that called a participant again because it was down
    /// (the saga's retried steps; 2PC's commits, which cannot give up once decided).</param>
    internal sealed record Run(int Committed, int Ended, int Total, TimeSpan MeanLatency, int Waited)
    {
        public double Success => Total == 0 ? 0 : (double)Committed / Total;
    }

    /// <summary>Both protocols at one n.</summary>
    internal sealed record Row(int N, double Expected, Run TwoPhase, Run Saga);

    /// <summary>The result and the figures behind it.</summary>
    internal sealed record Report(ExperimentResult Result, IReadOnlyList<Row> Rows);

    private static async Task<ExperimentResult> RunAsync(ExperimentContext context, CancellationToken cancellationToken) =>
        (await RunAsync(context, Settings.Default(Random.Shared.Next()), cancellationToken)).Result;

    /// <summary>Runs the experiment with <paramref name="settings"/> (the demo: <see cref="Settings.Default"/> with a random seed).</summary>
    internal static async Task<Report> RunAsync(ExperimentContext context, Settings settings, CancellationToken cancellationToken)
    {
        var console = context.Console;
        Note(console,
            $"seed {settings.Seed}; each call finds its participant up with probability a = {settings.Availability:0.###} (retried {settings.RetryDelay.TotalMilliseconds:0} ms later); " +
            $"K = {settings.Transactions} transactions per protocol and n, {settings.Concurrency} at a time");
        var calls = new ConcurrentDictionary<int, int>();
        await using var participants = await ExperimentParticipants.StartAsync(
            (participant, _) => new ParticipantAnswer(
                participant >= settings.Concurrency // the warm-up's participants are always up
                && IsDown(settings.Seed, participant, calls.AddOrUpdate(participant, 0, static (_, n) => n + 1), settings.Availability),
                TimeSpan.Zero),
            cancellationToken);
        using var client = new TreatyClient(new Uri(context.Env.CoordinatorUrl));
        var run = Guid.NewGuid().ToString("N")[..6];
        // The first calls pay for JIT compilation and new connections (a second and more): a few
        // transactions on participants that are always up take that cost out of the measurement.
        var warmUp = settings with { Transactions = settings.Concurrency };
        await RunManyAsync(client, warmUp, k => TwoPhase(participants, settings, $"avail-{run}-warm-2pc-{k}", 1, first: k), cancellationToken);
        await RunManyAsync(client, warmUp, k => Saga(participants, settings, $"avail-{run}-warm-saga-{k}", 1, first: k), cancellationToken);
        // Every transaction gets participants of its own: ids are never reused (see the remarks).
        var next = settings.Concurrency;
        var rows = new List<Row>();
        foreach (var n in settings.ParticipantCounts)
        {
            var twoPhaseFirst = next;
            var sagaFirst = twoPhaseFirst + (settings.Transactions * n);
            next = sagaFirst + (settings.Transactions * n);
            var twoPhase = await RunManyAsync(client, settings, k => TwoPhase(participants, settings, $"avail-{run}-2pc-{n}-{k}", n, twoPhaseFirst + (k * n)), cancellationToken);
            var saga = await RunManyAsync(client, settings, k => Saga(participants, settings, $"avail-{run}-saga-{n}-{k}", n, sagaFirst + (k * n)), cancellationToken);
            var row = new Row(n, Math.Pow(settings.Availability, n), twoPhase, saga);
            rows.Add(row);
            Note(console, $"n = {n}: 2PC committed {twoPhase.Committed}/{twoPhase.Total} (a^n = {row.Expected:0.000}), saga {saga.Committed}/{saga.Total}");
        }

        Note(console,
            $"participants answered {participants.DownAnswers} of {participants.TotalCalls} calls with 503; the texts' 0.999^n: " +
            string.Join(", ", settings.ParticipantCounts.Select(n => $"n = {n}: {Math.Pow(0.999, n):0.000}")));
        var last = rows[^1];
        var summary = string.Create(CultureInfo.InvariantCulture,
            $"2PC committed {string.Join(" / ", rows.Select(r => $"{r.TwoPhase.Success:P0}"))} with n = {string.Join(" / ", rows.Select(r => r.N))} " +
            $"participants each up {settings.Availability:P0} of the time (a^n = {string.Join(" / ", rows.Select(r => $"{r.Expected:P0}"))}); " +
            $"the saga committed {string.Join(" / ", rows.Select(r => $"{r.Saga.Success:P0}"))} by waiting for them " +
            $"(mean latency at n = {last.N}: saga {last.Saga.MeanLatency.TotalMilliseconds:0} ms, 2PC {last.TwoPhase.MeanLatency.TotalMilliseconds:0} ms).");
        return new Report(new ExperimentResult(Definition.Name, summary, Checks(rows, settings.Transactions), Table(rows)), rows);
    }

    /// <summary>Whether <paramref name="participant"/>'s call number <paramref name="call"/> (0 for its first) finds it
    /// down: a pure function of the seed, so a run replays with the same seed.</summary>
    internal static bool IsDown(int seed, int participant, long call, double availability) =>
        Uniform(seed, participant, call) >= availability;

    /// <summary>A uniform value in [0, 1) drawn by SplitMix64 from (seed, participant, call).</summary>
    internal static double Uniform(int seed, int participant, long call)
    {
        var x = Mix(unchecked((ulong)seed + 0x9E3779B97F4A7C15UL));
        x = Mix(x ^ unchecked((ulong)participant * 0xD1B54A32D192ED03UL));
        x = Mix(x ^ unchecked((ulong)call));
        return (x >> 11) * (1.0 / (1UL << 53));
    }

    private static ulong Mix(ulong z)
    {
        unchecked
        {
            z += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }

    /// <summary>Four binomial standard deviations of the share of <paramref name="trials"/> that succeed with probability <paramref name="p"/>.</summary>
    internal static double Tolerance(double p, int trials) => 4 * Math.Sqrt(p * (1 - p) / trials);

    internal static IReadOnlyList<Check> Checks(IReadOnlyList<Row> rows, int trials)
    {
        if (rows.Count == 0)
        {
            return [new Check("measured at least one n", false)];
        }

        var checks = new List<Check>();
        foreach (var row in rows)
        {
            var tolerance = Tolerance(row.Expected, trials);
            checks.Add(new Check(
                $"n = {row.N}: 2PC's success is a^n = {row.Expected:0.000} (within 4σ = ±{tolerance:0.000})",
                Math.Abs(row.TwoPhase.Success - row.Expected) <= tolerance,
                $"measured {row.TwoPhase.Success:0.000} ({row.TwoPhase.Committed}/{row.TwoPhase.Total})"));
        }

        var falling = rows.Zip(rows.Skip(1)).All(p => p.First.TwoPhase.Success > p.Second.TwoPhase.Success);
        checks.Add(new Check(
            "2PC's success falls as n grows",
            falling,
            string.Join(" > ", rows.Select(r => $"{r.TwoPhase.Success:0.000} (n = {r.N})"))));
        foreach (var row in rows)
        {
            checks.Add(new Check(
                $"n = {row.N}: the saga commits ≥ 99%",
                row.Saga.Success >= 0.99,
                $"measured {row.Saga.Success:0.000} ({row.Saga.Committed}/{row.Saga.Total})"));
        }

        foreach (var row in rows)
        {
            var ended = row.TwoPhase.Ended + row.Saga.Ended;
            var total = row.TwoPhase.Total + row.Saga.Total;
            checks.Add(new Check($"n = {row.N}: every transaction ended (committed or aborted)", ended == total, $"{ended}/{total}"));
        }

        var last = rows[^1];
        var gap = Tolerance(last.Expected, trials);
        checks.Add(new Check(
            $"n = {last.N}: 2PC is clearly below the saga (by more than 4σ = {gap:0.000})",
            last.TwoPhase.Success + gap < last.Saga.Success,
            $"2PC {last.TwoPhase.Success:0.000}, saga {last.Saga.Success:0.000}"));
        return checks;
    }

    private static Table Table(IReadOnlyList<Row> rows)
    {
        var table = new Table().Border(TableBorder.Rounded).Title("Availability: 2PC against a saga");
        table.AddColumn(new TableColumn("n").RightAligned());
        table.AddColumn(new TableColumn("a^n (expected 2PC)").RightAligned());
        table.AddColumn(new TableColumn("2PC measured").RightAligned());
        table.AddColumn(new TableColumn("saga measured").RightAligned());
        table.AddColumn(new TableColumn("saga mean latency").RightAligned());
        table.AddColumn(new TableColumn("2PC mean latency").RightAligned());
        table.AddColumn(new TableColumn("waited for a participant (saga / 2PC)").RightAligned());
        table.AddColumn(new TableColumn("0.999^n (texts)").RightAligned());
        foreach (var row in rows)
        {
            table.AddRow(
                row.N.ToString(CultureInfo.InvariantCulture),
                row.Expected.ToString("0.000", CultureInfo.InvariantCulture),
                $"{row.TwoPhase.Success.ToString("0.000", CultureInfo.InvariantCulture)} ({row.TwoPhase.Committed}/{row.TwoPhase.Total})",
                $"{row.Saga.Success.ToString("0.000", CultureInfo.InvariantCulture)} ({row.Saga.Committed}/{row.Saga.Total})",
                Milliseconds(row.Saga.MeanLatency),
                Milliseconds(row.TwoPhase.MeanLatency),
                $"{row.Saga.Waited} / {row.TwoPhase.Waited}",
                Math.Pow(0.999, row.N).ToString("0.000", CultureInfo.InvariantCulture));
        }

        return table;
    }

    private static void Note(IAnsiConsole console, string text) => console.MarkupLine("[grey]" + Markup.Escape(text) + "[/]");

    private static string Milliseconds(TimeSpan value) => value.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms";

    /// <summary>A 2PC whose participants are down at prepare vote NO: with one attempt an unknown vote
    /// (503) runs out at once. The same policy spaces the commit's retries one retry delay apart: a commit
    /// never gives up (the transaction is stuck until the participant is back), so the decision stands.</summary>
    private static SubmitTransactionRequest TwoPhase(ExperimentParticipants participants, Settings settings, string gid, int n, int first)
    {
        var builder = new TwoPhaseCommitBuilder(gid).WithRetry(settings.TwoPhaseAttempts, settings.RetryDelay, settings.RetryDelay);
        for (var i = 0; i < n; i++)
        {
            var p = first + i;
            builder.Branch($"p{i}", participants.Url(p, "prepare"), participants.Url(p, "commit"), participants.Url(p, "rollback"));
        }

        return builder.Build();
    }

    /// <summary>A saga of n sequential steps, each retried with backoff (from one retry delay up to eight) until its participant is back.</summary>
    private static SubmitTransactionRequest Saga(ExperimentParticipants participants, Settings settings, string gid, int n, int first)
    {
        var builder = new SagaBuilder(gid).WithRetry(40, settings.RetryDelay, settings.RetryDelay * 8);
        for (var i = 0; i < n; i++)
        {
            var p = first + i;
            builder.Step($"p{i}", participants.Url(p, "action"), compensate: participants.Url(p, "compensate"));
        }

        return builder.Build();
    }

    /// <summary>Submits the K transactions, a few at a time, each waiting for its outcome.</summary>
    private static async Task<Run> RunManyAsync(TreatyClient client, Settings settings, Func<int, SubmitTransactionRequest> build, CancellationToken cancellationToken)
    {
        var requests = Enumerable.Range(0, settings.Transactions).Select(build).ToArray();
        var committed = new bool[requests.Length];
        var ended = new bool[requests.Length];
        var latencies = new TimeSpan[requests.Length];
        var waited = new bool[requests.Length];
        var time = TimeProvider.System;
        var options = new ParallelOptions { MaxDegreeOfParallelism = settings.Concurrency, CancellationToken = cancellationToken };
        await Parallel.ForEachAsync(Enumerable.Range(0, requests.Length), options, async (k, ct) =>
        {
            var started = time.GetTimestamp();
            var view = await client.SubmitAsync(requests[k], Patience, ct);
            if (!view.IsTerminal())
            {
                view = await client.WaitAsync(view.Gid, Patience, ct);
            }

            latencies[k] = time.GetElapsedTime(started);
            ended[k] = view.IsTerminal();
            committed[k] = view.IsCommitted();
            waited[k] = view.IsCommitted() && view.Branches.Any(b => b.Ops.Values.Any(o => o.Attempts > 1));
        });
        var mean = TimeSpan.FromTicks((long)latencies.Average(l => l.Ticks));
        return new Run(committed.Count(c => c), ended.Count(e => e), requests.Length, mean, waited.Count(w => w));
    }
}
