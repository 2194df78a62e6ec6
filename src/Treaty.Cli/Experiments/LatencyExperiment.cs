using System.Globalization;
using Spectre.Console;
using Treaty.Client;
using Treaty.Core.Contracts;

namespace Treaty.Cli.Experiments;

/// <summary>
/// <c>latency</c>: 2PC needs four sequential network hops (two round trips) per transaction, and each
/// protocol has its own number of sequential rounds. Every participant call is held a fixed delay d
/// at the participant, so a transaction takes about (rounds × d) plus the coordinator's own overhead,
/// which the same run with d = 0 measures; the rounds are (latency at d − latency at 0) / d.
/// </summary>
internal static class LatencyExperiment
{
    public static Experiment Definition { get; } = new(
        "latency",
        "2PC needs four sequential network hops (two round trips) per transaction; each protocol has its own number of sequential rounds.",
        RunAsync);

    private const int Participants = 3;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>The experiment's knobs; <see cref="Default"/> is what the demo runs.</summary>
    /// <param name="Delay">d: how long every participant holds every call.</param>
    /// <param name="Transactions">Transactions per protocol and delay, run one after another.</param>
    internal sealed record Settings(TimeSpan Delay, int Transactions)
    {
        /// <summary>d = 200 ms and the median of 7: on a busy machine the coordinator's own time per
        /// transaction varies by tens of milliseconds, which must stay well under half a round.</summary>
        public static Settings Default { get; } = new(TimeSpan.FromMilliseconds(200), 7);
    }

    /// <summary>A protocol as this experiment runs it, with what the engine's code says it costs.</summary>
    /// <param name="Name">The wire name.</param>
    /// <param name="Rounds">Sequential rounds of participant calls before the transaction is committed.</param>
    /// <param name="Calls">Participant calls per committed transaction.</param>
    /// <param name="Why">Where the rounds come from.</param>
    internal sealed record Protocol(string Name, int Rounds, int Calls, string Why);

    /// <summary>
    /// The rounds as the engine runs each protocol (src/Treaty.Core/Protocols): a transaction is
    /// committed only once the last phase's calls have all answered, so that phase counts.
    /// </summary>
    internal static IReadOnlyList<Protocol> Protocols { get; } =
    [
        new("saga", 3, 3, "3 actions, one after another: a step depends on the previous one unless dependsOn says otherwise"),
        new("tcc", 2, 6, "3 tries at once, then 3 confirms at once; committed when every confirm answered"),
        new("2pc", 2, 6, "3 prepares at once, the decision written, then 3 commits at once; committed when every commit answered (4 hops)"),
        new("3pc", 3, 9, "canCommit, preCommit, doCommit: 3 rounds of 3 calls at once"),
        new("msg", 1, 3, "after the sender's submit, the 3 actions at once (no dependsOn); queryPrepared is never asked as the submit came in time"),
    ];

    /// <summary>One protocol's transactions at one delay.</summary>
    /// <param name="Latencies">Submit to committed, per transaction.</param>
    /// <param name="Calls">Participant calls per transaction.</param>
    /// <param name="Committed">How many committed.</param>
    internal sealed record Run(IReadOnlyList<TimeSpan> Latencies, IReadOnlyList<int> Calls, int Committed)
    {
        public TimeSpan Median => MedianOf(Latencies);

        public static Run Of(IReadOnlyList<Sample> samples) =>
            new([.. samples.Select(s => s.Latency)], [.. samples.Select(s => s.Calls)], samples.Count(s => s.Committed));
    }

    /// <summary>One transaction: submit to outcome, whether it committed, the participant calls it made.</summary>
    internal sealed record Sample(TimeSpan Latency, bool Committed, int Calls);

    /// <summary>One protocol at d = 0 and at d.</summary>
    internal sealed record Row(Protocol Protocol, Run Zero, Run Delayed, TimeSpan Delay)
    {
        /// <summary>Latency at d over d: the rounds plus the overhead, in units of d.</summary>
        public double RawRounds => Delayed.Median / Delay;

        /// <summary>The latency d added, in units of d: the sequential rounds of participant calls.</summary>
        public double MeasuredRounds => (Delayed.Median - Zero.Median) / Delay;
    }

    /// <summary>The result and the figures behind it.</summary>
    internal sealed record Report(ExperimentResult Result, IReadOnlyList<Row> Rows);

    private static async Task<ExperimentResult> RunAsync(ExperimentContext context, CancellationToken cancellationToken) =>
        (await RunAsync(context, Settings.Default, cancellationToken)).Result;

    /// <summary>Runs the experiment with <paramref name="settings"/> (the demo: <see cref="Settings.Default"/>).</summary>
    internal static async Task<Report> RunAsync(ExperimentContext context, Settings settings, CancellationToken cancellationToken)
    {
        Note(context.Console, $"{Participants} participants; every call held d = {settings.Delay.TotalMilliseconds:0} ms (then d = 0); " +
            $"{settings.Transactions} transactions per protocol, one after another");
        var delayTicks = 0L;
        await using var participants = await ExperimentParticipants.StartAsync(
            (_, _) => new ParticipantAnswer(false, TimeSpan.FromTicks(Interlocked.Read(ref delayTicks))),
            cancellationToken);
        using var client = new TreatyClient(new Uri(context.Env.CoordinatorUrl));
        var run = Guid.NewGuid().ToString("N")[..6];
        var rows = new List<Row>();
        foreach (var protocol in Protocols)
        {
            // One transaction first, not measured: the first calls pay for JIT compilation and new
            // connections, which would count as rounds.
            await RunOneAsync(client, participants, protocol, $"lat-{run}-{protocol.Name}-warm", cancellationToken);
            var zero = new List<Sample>();
            var delayed = new List<Sample>();
            // d = 0 and d alternate, so a burst of load on the machine weighs on both alike.
            for (var k = 0; k < settings.Transactions; k++)
            {
                Interlocked.Exchange(ref delayTicks, 0);
                zero.Add(await RunOneAsync(client, participants, protocol, $"lat-{run}-{protocol.Name}-0-{k}", cancellationToken));
                Interlocked.Exchange(ref delayTicks, settings.Delay.Ticks);
                delayed.Add(await RunOneAsync(client, participants, protocol, $"lat-{run}-{protocol.Name}-d-{k}", cancellationToken));
            }

            var row = new Row(protocol, Run.Of(zero), Run.Of(delayed), settings.Delay);
            rows.Add(row);
            Note(context.Console, $"{row.Protocol.Name}: median {row.Delayed.Median.TotalMilliseconds:0} ms at d, {row.Zero.Median.TotalMilliseconds:0} ms at 0 → {row.MeasuredRounds:0.00} rounds " +
                $"(at d: {string.Join(" ", row.Delayed.Latencies.Select(l => l.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture)))} ms; " +
                $"at 0: {string.Join(" ", row.Zero.Latencies.Select(l => l.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture)))} ms)");
        }

        var summary =
            $"Sequential rounds of participant calls, measured as (latency at d − latency at 0) / d with d = {Ms(settings.Delay)}: " +
            string.Join(", ", rows.Select(r => $"{r.Protocol.Name} {r.MeasuredRounds:0.0}")) +
            "; 2PC's two round trips are its four hops (prepare, vote, commit, ack).";
        return new Report(new ExperimentResult(Definition.Name, summary, Checks(rows), Table(rows)), rows);
    }

    internal static TimeSpan MedianOf(IReadOnlyList<TimeSpan> values)
    {
        if (values.Count == 0)
        {
            return TimeSpan.Zero;
        }

        var sorted = values.Order().ToArray();
        var middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }

    internal static IReadOnlyList<Check> Checks(IReadOnlyList<Row> rows)
    {
        var checks = new List<Check>();
        foreach (var row in rows)
        {
            var total = row.Zero.Latencies.Count + row.Delayed.Latencies.Count;
            checks.Add(new Check(
                $"{row.Protocol.Name}: every transaction committed",
                row.Zero.Committed + row.Delayed.Committed == total,
                $"{row.Zero.Committed + row.Delayed.Committed}/{total}"));
            checks.Add(new Check(
                $"{row.Protocol.Name}: {row.Protocol.Rounds} sequential round{(row.Protocol.Rounds == 1 ? "" : "s")} ({row.Protocol.Why})",
                (int)Math.Round(row.MeasuredRounds, MidpointRounding.AwayFromZero) == row.Protocol.Rounds,
                $"measured {row.MeasuredRounds:0.00} = ({Ms(row.Delayed.Median)} − {Ms(row.Zero.Median)}) / {Ms(row.Delay)}"));
            var calls = row.Zero.Calls.Concat(row.Delayed.Calls).ToList();
            checks.Add(new Check(
                $"{row.Protocol.Name}: {row.Protocol.Calls} participant calls per transaction",
                calls.Count > 0 && calls.All(c => c == row.Protocol.Calls),
                "measured " + string.Join(", ", calls.Distinct().Order())));
        }

        return checks;
    }

    private static Table Table(IReadOnlyList<Row> rows)
    {
        var delay = rows.Count == 0 ? "d" : Ms(rows[0].Delay);
        var table = new Table().Border(TableBorder.Rounded).Title("Latency: sequential rounds per protocol");
        table.AddColumn("protocol");
        table.AddColumn(new TableColumn("expected rounds").RightAligned());
        table.AddColumn(new TableColumn($"median latency (d = {delay})").RightAligned());
        table.AddColumn(new TableColumn("latency / d").RightAligned());
        table.AddColumn(new TableColumn("median at d = 0 (overhead)").RightAligned());
        table.AddColumn(new TableColumn("measured rounds").RightAligned());
        table.AddColumn(new TableColumn("calls per transaction").RightAligned());
        foreach (var row in rows)
        {
            table.AddRow(
                row.Protocol.Name,
                row.Protocol.Rounds.ToString(CultureInfo.InvariantCulture),
                Ms(row.Delayed.Median),
                row.RawRounds.ToString("0.00", CultureInfo.InvariantCulture),
                Ms(row.Zero.Median),
                row.MeasuredRounds.ToString("0.00", CultureInfo.InvariantCulture),
                string.Join(", ", row.Zero.Calls.Concat(row.Delayed.Calls).Distinct().Order()));
        }

        return table;
    }

    /// <summary>Runs one transaction of <paramref name="protocol"/> and waits for its outcome.</summary>
    private static async Task<Sample> RunOneAsync(
        TreatyClient client, ExperimentParticipants participants, Protocol protocol, string gid, CancellationToken cancellationToken)
    {
        var time = TimeProvider.System;
        TransactionView view;
        long started;
        if (protocol.Name == "msg")
        {
            // The sender registers the message, commits its local transaction (none here), then
            // submits: the latency runs from that submit, the delivery's start.
            var registered = await client.SubmitAsync(Message(participants, gid), wait: null, cancellationToken);
            if (registered.Status != "prepared")
            {
                throw new InvalidOperationException($"Message {gid} was {registered.Status} after its registration, not prepared.");
            }

            started = time.GetTimestamp();
            view = await client.SubmitPreparedAsync(gid, Patience, cancellationToken);
        }
        else
        {
            var request = Request(participants, protocol.Name, gid);
            started = time.GetTimestamp();
            view = await client.SubmitAsync(request, Patience, cancellationToken);
        }

        if (!view.IsTerminal())
        {
            view = await client.WaitAsync(gid, Patience, cancellationToken);
        }

        var latency = time.GetElapsedTime(started);
        return new Sample(latency, view.IsCommitted(), participants.CallsFor(gid));
    }

    private static SubmitTransactionRequest Request(ExperimentParticipants p, string protocol, string gid)
    {
        switch (protocol)
        {
            case "saga":
                var saga = new SagaBuilder(gid);
                for (var i = 0; i < Participants; i++)
                {
                    saga.Step($"p{i}", p.Url(i, "action"), compensate: p.Url(i, "compensate"));
                }

                return saga.Build();
            case "tcc":
                var tcc = new TccBuilder(gid);
                for (var i = 0; i < Participants; i++)
                {
                    tcc.Branch($"p{i}", p.Url(i, "try"), p.Url(i, "confirm"), p.Url(i, "cancel"));
                }

                return tcc.Build();
            case "2pc":
                var twoPhase = new TwoPhaseCommitBuilder(gid);
                for (var i = 0; i < Participants; i++)
                {
                    twoPhase.Branch($"p{i}", p.Url(i, "prepare"), p.Url(i, "commit"), p.Url(i, "rollback"));
                }

                return twoPhase.Build();
            case "3pc":
                var threePhase = new ThreePhaseCommitBuilder(gid);
                for (var i = 0; i < Participants; i++)
                {
                    threePhase.Branch($"p{i}", p.Url(i, "can-commit"), p.Url(i, "pre-commit"), p.Url(i, "do-commit"), p.Url(i, "abort"));
                }

                return threePhase.Build();
            default:
                throw new ArgumentOutOfRangeException(nameof(protocol), protocol, "Not a protocol of this experiment.");
        }
    }

    /// <summary>A two-phase message to the three participants; its queryPrepared would say "committed" (and is never asked).</summary>
    private static SubmitTransactionRequest Message(ExperimentParticipants p, string gid)
    {
        var message = new MessageBuilder(gid).WithQueryPrepared(p.Url(0, "query-prepared")).WithTimeout(Patience);
        for (var i = 0; i < Participants; i++)
        {
            message.Branch($"p{i}", p.Url(i, "action"));
        }

        return message.Build();
    }

    private static void Note(IAnsiConsole console, string text) => console.MarkupLine("[grey]" + Markup.Escape(text) + "[/]");

    private static string Ms(TimeSpan value) => value.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms";
}
