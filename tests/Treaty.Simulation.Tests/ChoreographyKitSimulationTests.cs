using System.Globalization;
using Treaty.Simulation.Harness;
using Xunit.Abstractions;

namespace Treaty.Simulation.Tests;

/// <summary>
/// The choreographed checkout in the simulation (<c>SimMode.Choreography</c>): the three services
/// run the real messaging kit (outbox in the handler's transaction, the inbox pipeline, the relay's
/// loop) over a SQLite file each, under a broker that loses, duplicates, delays and redelivers, and
/// crashes after a commit before the relay, after a publish before marking it sent, and after an
/// inbox commit before the ack, and after a report's answer before the reporter marked it; the kit's
/// own reporting (report rows in the publisher's transaction, the ChoreographyReporter's loop) tells
/// the real engine what they published. <c>TREATY_SIM_SEED=n
/// TREATY_SIM_VARIANT=choreography</c> replays one seed (with <c>--filter Seeds_Keep</c>).
/// </summary>
public sealed class ChoreographyKitSimulationTests(ITestOutputHelper output)
{
    private const int DefaultRuns = 400;

    [Fact]
    public void Seeds_ChoreographyKeepsEveryInvariant_UnderLostDuplicatedReorderedDeliveriesAndCrashes()
    {
        var runs = SimEnvironment.Runs ?? DefaultRuns;
        var sweep = Sweep.Run(0, runs, s => new SimOptions(s, Mode: SimMode.Choreography));
        var line = string.Create(CultureInfo.InvariantCulture,
            $"Choreography simulation: {runs} seeds in {sweep.Elapsed.TotalSeconds:0.0}s ({sweep.Cpu.TotalMilliseconds / runs:0.0} ms of CPU and {sweep.Events / runs} events per seed), {sweep.Failures.Count} failed\nCoverage: {sweep.Stats}");
        output.WriteLine(line);
        Console.WriteLine(line);
        if (sweep.Failures.Count > 0)
        {
            var first = sweep.Failures.MinBy(f => f.Seed)!;
            var seeds = string.Join("\n  ", sweep.Failures.OrderBy(f => f.Seed).Take(30).Select(f => $"seed {f.Seed}: {f.Violations[0]}"));
            Assert.Fail($"{sweep.Failures.Count} of {runs} choreography seeds failed; the first 30:\n  {seeds}\n{first.Report()}");
        }

        // The faults really happened, and both endings were reached.
        var stats = sweep.Stats;
        foreach (var counter in new[]
        {
            "choreography confirmed", "choreography cancelled", "broker lost", "broker duplicated", "broker reordered", "broker redelivered",
            "broker acks-lost", "kit publish-failures", "kit confirms-lost", "kit handler-errors", "kit inbox-duplicates",
            "crash after-commit-before-relay", "crash after-publish-before-mark-sent", "crash after-inbox-commit-before-ack",
            "crash after-report-answer-before-mark", "crash random", "crash coordinator", "reports lost", "reports duplicates", "reports unanswered",
        })
        {
            stats[counter].ShouldBeGreaterThan(runs / 40, counter);
        }
    }

    [Fact]
    public void SameSeed_ProducesTheSameTrace_InTheChoreographyMode()
    {
        int[] seeds = [0, 1, 7, 42, 99, 4242];
        var runs = new SimResult[seeds.Length * 2];
        // The pairs at the same time on different threads: anything that escaped the scheduler
        // (a thread-pool continuation, an unseeded id, a real clock) would make them differ.
        Parallel.For(0, runs.Length, i => runs[i] = SimulationRun.Execute(new SimOptions(seeds[i / 2], Mode: SimMode.Choreography, KeepFullTrace: true)));
        for (var i = 0; i < seeds.Length; i++)
        {
            var (a, b) = (runs[2 * i], runs[2 * i + 1]);
            a.Ok.ShouldBeTrue(a.Report());
            a.FullTrace.Count.ShouldBeGreaterThan(20);
            for (var line = 0; line < Math.Min(a.FullTrace.Count, b.FullTrace.Count); line++)
            {
                b.FullTrace[line].ShouldBe(a.FullTrace[line], $"seed {seeds[i]} diverged at trace line {line}");
            }

            b.FullTrace.Count.ShouldBe(a.FullTrace.Count, $"seed {seeds[i]}");
            b.TraceHash.ShouldBe(a.TraceHash);
        }

        runs.Select(r => r.TraceHash).Distinct().Count().ShouldBe(seeds.Length);
    }

    /// <summary>The seed the docs use (<c>treaty simulate --seed 42 --mode choreography</c>).</summary>
    [Fact]
    public void Seed42_KeepsEveryInvariant_AndSaysHowToReplayIt()
    {
        var result = SimulationRun.Execute(new SimOptions(42, Mode: SimMode.Choreography));

        result.Ok.ShouldBeTrue(result.Report());
        result.Replay.ShouldBe("TREATY_SIM_SEED=42 TREATY_SIM_VARIANT=choreography dotnet test tests/Treaty.Simulation.Tests --filter Seeds_Keep");
        result.Stats["choreography checkouts"].ShouldBe(result.Stats["choreography confirmed"] + result.Stats["choreography cancelled"]);
    }

    /// <summary>
    /// The kit broken three ways from the harness (no inbox, no publisher confirms, ack on arrival):
    /// each must fail at least 5% of 100 seeds, so a harness change that blinds the simulation to
    /// duplicates or to lost messages fails here.
    /// </summary>
    [Theory]
    [InlineData("chor-no-inbox")]
    [InlineData("chor-no-publisher-confirms")]
    [InlineData("chor-ack-before-commit")]
    public void KnownBadVariant_IsCaught(string name)
    {
        const int Bound = 100;
        var variant = SimVariants.Parse(name);
        SimVariants.ModeFor(variant).ShouldBe(SimMode.Choreography);
        var sweep = Sweep.Run(0, Bound, s => new SimOptions(s, variant, SimMode.Choreography, StopAtFirstViolation: true));
        var first = sweep.Failures.MinBy(r => r.Seed);
        var line = first is null
            ? $"{name}: caught by no seed of {Bound}"
            : $"{name}: caught by {sweep.Failures.Count} of {Bound} seeds (first: seed {first.Seed}) in {sweep.Elapsed.TotalSeconds:0.0}s: {first.Violations[0]}";
        output.WriteLine(line);
        Console.WriteLine(line);
        sweep.Failures.Count.ShouldBeGreaterThanOrEqualTo(Bound / 20, line);
        first!.Replay.ShouldBe($"TREATY_SIM_SEED={first.Seed} TREATY_SIM_VARIANT={name} dotnet test tests/Treaty.Simulation.Tests --filter Seeds_Keep");
    }
}
