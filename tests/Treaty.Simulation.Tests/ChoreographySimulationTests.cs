using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Simulation.Tests;

/// <summary>
/// The choreography machine fed by a faulty report channel, one seed per run: the services' true
/// event flow is fixed by the seed, and each report may be lost, duplicated, delayed past the
/// timeout or overtaken by a later one. Whatever happens to the reports, the coordinator never
/// states a wrong outcome: a lost terminal report leaves the saga running and stuck, never decided.
/// (This drives the pure <c>Decide</c> with simulated time, not the whole engine simulation.)
/// </summary>
public sealed class ChoreographySimulationTests
{
    private const int Runs = 3_000;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(1);
    private static readonly DateTimeOffset T0 = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

    private static readonly (string Type, string Service, ChoreographyOutcome? Outcome)[][] Flows =
    [
        [("order.created", "order", null), ("payment.reserved", "payment", null), ("inventory.reserved", "inventory", null), ("order.confirmed", "order", ChoreographyOutcome.Completed)],
        [("order.created", "order", null), ("payment.failed", "payment", null), ("order.cancelled", "order", ChoreographyOutcome.Compensated)],
        [("order.created", "order", null), ("payment.reserved", "payment", null), ("inventory.failed", "inventory", null), ("payment.refunded", "payment", null), ("order.cancelled", "order", ChoreographyOutcome.Compensated)],
        [("order.created", "order", null), ("payment.reserved", "payment", null), ("payment.refund-failed", "payment", ChoreographyOutcome.Failed)],
    ];

    [Fact]
    public void Seeds_LostDuplicatedReorderedDelayedReports_NeverAWrongOutcome()
    {
        var seen = new Counts();
        for (var seed = 0; seed < Runs; seed++)
        {
            RunOne(seed, seen);
        }

        // The faults really happened (a sweep that never loses a terminal report proves little).
        seen.LostTerminal.ShouldBeGreaterThan(50);
        seen.Duplicates.ShouldBeGreaterThan(500);
        seen.Reordered.ShouldBeGreaterThan(500);
        seen.StuckThenMoved.ShouldBeGreaterThan(20);
        seen.LateAfterEnd.ShouldBeGreaterThan(50);
    }

    private static void RunOne(int seed, Counts seen)
    {
        var random = new Random(seed);
        var flow = Flows[random.Next(Flows.Length)];
        var gid = $"order-{seed}";
        var lose = random.NextDouble() * 0.3;
        var duplicate = random.NextDouble() * 0.5;
        var slow = random.NextDouble() * 0.4;

        // The truth: each service emits its event a little after the one it reacted to.
        var deliveries = new List<(DateTimeOffset At, int Index, ChoreographyEvent Event)>();
        var emitted = T0;
        for (var i = 0; i < flow.Length; i++)
        {
            emitted += TimeSpan.FromMilliseconds(10 + random.Next(300));
            var (type, service, outcome) = flow[i];
            var e = new ChoreographyEvent($"{gid}-m{i}", type, service, gid, emitted, null, outcome, (long)Timeout.TotalMilliseconds);
            var copies = random.NextDouble() < duplicate ? 2 : 1;
            for (var c = 0; c < copies; c++)
            {
                if (random.NextDouble() < lose)
                {
                    continue;
                }

                var delay = TimeSpan.FromMilliseconds(random.NextDouble() < slow ? 200 + random.Next(2_500) : random.Next(50));
                deliveries.Add((emitted + delay, i, e));
            }
        }

        deliveries.Sort((a, b) => a.At.CompareTo(b.At));
        var delivered = deliveries.Select(d => d.Event.MessageId).Distinct().ToList();
        seen.Duplicates += deliveries.Count - delivered.Count;
        seen.Reordered += deliveries.Zip(deliveries.Skip(1)).Count(p => p.First.Index > p.Second.Index);

        var machine = new ChoreographyMachine(Timeout);
        var rng = new SeededRandomSource(seed);
        var start = deliveries.Count > 0 ? deliveries[0].At : T0;
        var state = machine.Create(ChoreographyMachine.SpecFor(gid), ChoreographyMachine.Fingerprint, start);
        var alerts = 0;
        var stuckEntries = 0;
        var wasStuck = false;
        Decision Step(TransactionEvent ev, DateTimeOffset now)
        {
            var d = machine.Decide(state, ev, new DecisionContext(now, rng));
            alerts += d.Commands.OfType<Alert>().Count();
            stuckEntries += d.Journal.Count(j => j.Kind == JournalKinds.Stuck);
            state = d.Next;
            if (wasStuck && !state.Stuck && ev is EventReported)
            {
                seen.StuckThenMoved++;
            }

            wasStuck = state.Stuck;
            return d;
        }

        void FireTimersUntil(DateTimeOffset until)
        {
            while (!state.Stuck && state.NextWakeAt is { } wake && wake <= until)
            {
                Step(new TimerFired(), wake);
            }
        }

        Step(new Submitted(), start);
        foreach (var (at, _, e) in deliveries)
        {
            FireTimersUntil(at);
            var wasTerminal = state.IsTerminal;
            Step(new EventReported(e), at);
            if (wasTerminal && state.Choreography!.MessageIds[^1] == e.MessageId && state.Choreography.MessageIds.Count(id => id == e.MessageId) == 1)
            {
                seen.LateAfterEnd++;
            }
        }

        FireTimersUntil(DateTimeOffset.MaxValue.AddYears(-1));

        var terminal = flow[^1];
        var terminalDelivered = deliveries.Any(d => d.Index == flow.Length - 1);
        var because = $"seed {seed}: flow ending {terminal.Type}, delivered [{string.Join(", ", deliveries.Select(d => d.Event.Type))}]";
        if (terminalDelivered)
        {
            var expected = terminal.Outcome == ChoreographyOutcome.Completed ? TransactionStatus.Committed : TransactionStatus.Aborted;
            state.Status.ShouldBe(expected, because);
            state.Stuck.ShouldBeFalse(because);
        }
        else
        {
            // Lost: the coordinator cannot know the outcome, so it says so, and never guesses.
            seen.LostTerminal++;
            state.Status.ShouldBe(TransactionStatus.Running, because);
            state.Outcome.ShouldBeNull(because);
            state.Stuck.ShouldBeTrue(because);
        }

        state.Choreography!.MessageIds.ShouldBe(delivered, ignoreOrder: false, because);
        state.Branches.Sum(b => b.Ops.Sum(o => o.Attempts)).ShouldBe(delivered.Count, because);
        alerts.ShouldBe(stuckEntries, because);
    }

    private sealed class Counts
    {
        public int LostTerminal { get; set; }
        public int Duplicates { get; set; }
        public int Reordered { get; set; }
        public int StuckThenMoved { get; set; }
        public int LateAfterEnd { get; set; }
    }
}
