using System.Globalization;
using Treaty.Simulation.Harness;
using Xunit.Abstractions;

namespace Treaty.Simulation.Tests;

/// <summary>
/// Three coordinator instances on one store under leases (<see cref="SimMode.MultiCoordinator"/>):
/// skewed clocks, pauses longer than a lease, crashes restarted under a new owner name, operators
/// and clients reaching any instance. <c>TREATY_SIM_SEED=n TREATY_SIM_VARIANT=multi</c> replays one
/// seed (through <see cref="SimulationTests.Seeds_KeepEveryInvariant"/>); <c>TREATY_SIM_RUNS=n</c>
/// sets how many seeds the sweep covers.
/// </summary>
public sealed class MultiCoordinatorSimulationTests(ITestOutputHelper output)
{
    private const int DefaultRuns = 300;

    [Fact]
    public void MultiCoordinator_Seeds_KeepEveryInvariant()
    {
        if (SimEnvironment.ReplaySeed is not null)
        {
            return; // SimulationTests.Seeds_KeepEveryInvariant replays the seed (TREATY_SIM_VARIANT=multi).
        }

        var runs = SimEnvironment.Runs ?? DefaultRuns;
        var sweep = Sweep.Run(0, runs, s => new SimOptions(s, Mode: SimMode.MultiCoordinator));
        var stats = sweep.Stats;
        Say(string.Create(CultureInfo.InvariantCulture,
            $"Multi-coordinator: {runs} seeds in {sweep.Elapsed.TotalSeconds:0.0}s ({sweep.Events / runs} events per seed), {sweep.Failures.Count} failed; {stats["multi pauses"]} pauses, {stats["multi instance-crashes"]} instance crashes, {stats["multi takeovers-expired"]} take-overs of expired leases, {stats["multi takeovers-live"]} of live ones (operators), {stats["multi renewals-lost"]} leases lost at renewal, {stats["multi fenced-writes"]} fenced writes in {stats["multi seeds-with-fenced-writes"]} seeds, {stats["multi stale-sends"]} calls sent by a stale owner"));
        Say($"Coverage: {stats}");
        if (sweep.Failures.Count > 0)
        {
            var first = sweep.Failures.MinBy(f => f.Seed)!;
            var seeds = string.Join("\n  ", sweep.Failures.OrderBy(f => f.Seed).Take(50).Select(f => $"{f.Seed}: {f.Violations[0]}"));
            Assert.Fail($"{sweep.Failures.Count} of {runs} seeds failed; the first 50:\n  {seeds}\n{first.Report()}");
        }

        // The scenario is really exercised: stale owners wake up and are fenced, leases of dead and
        // frozen instances are taken over, operators take transactions over from live holders.
        if (runs >= 100)
        {
            stats["multi pauses"].ShouldBeGreaterThan(runs);
            stats["multi instance-crashes"].ShouldBeGreaterThan(runs / 2);
            stats["multi takeovers-expired"].ShouldBeGreaterThan(runs);
            stats["multi takeovers-live"].ShouldBeGreaterThan(runs / 10);
            stats["multi renewals-lost"].ShouldBeGreaterThan(runs / 10);
            stats["multi fenced-writes"].ShouldBeGreaterThan(0);
            stats["multi seeds-with-fenced-writes"].ShouldBeGreaterThan(runs / 10);
            stats["multi stale-sends"].ShouldBeGreaterThan(0);
        }
    }

    /// <summary>
    /// Seeds of the multi-coordinator mode that always run (add every seed that finds a real bug,
    /// with a comment naming it). As for <see cref="SimulationTests.RegressionSeeds"/>, a seed means
    /// the same history only for the same generator and fault mix.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(42)]
    // Two stale owners wake up mid-call: coord-c froze while writing m1 v2 (after taking m1 over
    // from coord-a, whose renewal reports the loss), coord-b took m1 over meanwhile; coord-c wakes
    // at 8.5 s and its write is fenced; coord-b froze with tx3's order.action in flight and while
    // writing tx3 v2, wakes at 9.4 s: its renewal reports m1 and tx3 lost, both its writes are fenced.
    [InlineData(18)]
    // The harness's deadline check blamed a stale owner: coord-c.2 froze at 3.6 s between sending
    // tx1's order.canCommit#1 and the two others it had decided (all three started, durably, before
    // the deadline); coord-a took tx1 over at 6.8 s and retried (#2); coord-c.2 woke at 8.2 s and
    // sent payment.canCommit#1 (a duplicate to the participant), which the check took for a start
    // after the deadline: it read "now" for an attempt the durable state had moved past. It now
    // reads that attempt's journal entry.
    [InlineData(102)]
    // Two operators' retries of message m4 on two instances took it over from each other (epochs 2
    // to 6 within 5 ms) until the engine's three tries ran out and it answered Refused for a
    // prepared message. The engine now waits a little, at random, before taking a transaction back,
    // and tries longer.
    [InlineData(4365)]
    public void MultiCoordinator_RegressionSeeds(int seed)
    {
        var result = SimulationRun.Execute(new SimOptions(seed, Mode: SimMode.MultiCoordinator));
        result.Ok.ShouldBeTrue(result.Report());
    }

    [Fact]
    public void MultiCoordinator_SameSeed_ProducesTheSameTrace()
    {
        SimOptions[] seeds = [new(0, Mode: SimMode.MultiCoordinator), new(42, Mode: SimMode.MultiCoordinator), new(7, SimVariant.StoreIgnoresFence, SimMode.MultiCoordinator)];
        var runs = new SimResult[seeds.Length * 2];
        Parallel.For(0, runs.Length, i => runs[i] = SimulationRun.Execute(seeds[i / 2] with { KeepFullTrace = true }));
        for (var i = 0; i < seeds.Length; i++)
        {
            runs[2 * i + 1].FullTrace.ShouldBe(runs[2 * i].FullTrace, $"seed {seeds[i]}");
            runs[2 * i + 1].TraceHash.ShouldBe(runs[2 * i].TraceHash);
        }
    }

    /// <summary>The known-bad store that ignores the fence: a stale owner's writes go through, and the store's ownership history shows it.</summary>
    [Fact]
    public void StoreIgnoringTheFence_IsCaught()
    {
        const int Bound = 300;
        var sweep = Sweep.Run(0, Bound, s => new SimOptions(s, SimVariant.StoreIgnoresFence, SimMode.MultiCoordinator, StopAtFirstViolation: true));
        var first = sweep.Failures.MinBy(r => r.Seed);
        Say(first is null
            ? $"store-ignores-fence: caught by no seed of {Bound}"
            : $"store-ignores-fence: caught by {sweep.Failures.Count} of {Bound} seeds (first: seed {first.Seed}): {first.Violations[0]}");
        sweep.Failures.Count.ShouldBeGreaterThanOrEqualTo(Bound / 10);
    }

    private void Say(string line)
    {
        output.WriteLine(line);
        Console.WriteLine(line);
    }
}
