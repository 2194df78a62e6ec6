using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Treaty.Core.Model;
using Treaty.Simulation.Harness;
using Xunit.Abstractions;

namespace Treaty.Simulation.Tests;

/// <summary>
/// The real engine and every protocol machine under injected faults, one seed per run.
/// <c>TREATY_SIM_SEED=n</c> replays one seed with its full trace (<c>TREATY_SIM_VARIANT=name</c>
/// against a known-bad variant, <c>partition</c> in the 3PC partition mode, <c>choreography</c> in the
/// choreography mode);
/// <c>TREATY_SIM_RUNS=n</c> sets how many seeds the sweep covers.
/// </summary>
public sealed class SimulationTests(ITestOutputHelper output)
{
    private const int DefaultRuns = 10_000;

    [Fact]
    public void Seeds_KeepEveryInvariant()
    {
        if (SimEnvironment.ReplaySeed is { } seed)
        {
            Replay(seed);
            return;
        }

        var runs = SimEnvironment.Runs ?? DefaultRuns;
        var sweep = Sweep.Run(0, runs, s => new SimOptions(s));
        Say(string.Create(CultureInfo.InvariantCulture,
            $"Simulation: {runs} seeds in {sweep.Elapsed.TotalSeconds:0.0}s = {runs / sweep.Elapsed.TotalSeconds:0} seeds/s ({sweep.Events / sweep.Elapsed.TotalSeconds:0} events/s, {Environment.ProcessorCount} threads; {sweep.Cpu.TotalMilliseconds / runs:0.00} ms of CPU and {sweep.Events / runs} events per seed), {sweep.Failures.Count} failed"));
        Say($"Coverage: {sweep.Stats}");
        if (sweep.Failures.Count > 0)
        {
            var first = sweep.Failures.MinBy(f => f.Seed)!;
            var seeds = string.Join("\n  ", sweep.Failures.OrderBy(f => f.Seed).Take(50).Select(f => $"{f.Seed}: {f.Violations[0]}"));
            Assert.Fail($"{sweep.Failures.Count} of {runs} seeds failed; the first 50:\n  {seeds}\n{first.Report()}");
        }

        // A sweep of some size must exercise every protocol, committing and aborting.
        foreach (var protocol in runs < 1_000 ? [] : new[] { "saga", "tcc", "2pc", "3pc", "msg" })
        {
            sweep.Stats[$"{protocol} committed"].ShouldBeGreaterThan(runs / 5, protocol);
            sweep.Stats[$"{protocol} aborted"].ShouldBeGreaterThan(runs / 20, protocol);
        }
    }

    /// <summary>
    /// Seeds that always run. Add every seed that finds a real bug here (with a comment naming the
    /// bug). Besides those, it holds the seed the docs use (42). A seed means the same history only
    /// for the same workload generator and fault mix: when they change, re-check each one
    /// reproduces its history (put the bug back, sweep, take the smallest seed that fails the way
    /// the comment says), and keep the focused unit test in Treaty.Core.Tests as the lasting guard.
    /// </summary>
    [Theory]
    [InlineData(42)]
    // The engine bug "a timer that fires a hair early is never re-armed": with the no-op branch of
    // TransactionEngine.DecideAndPersistAsync not calling Schedule(_state.NextWakeAt), the timer of
    // tx2's (tcc) payment.cancel#5 fires 1.812 ms early at 7.746 s, the decision changes nothing,
    // the retry never happens and tx2 stays aborting until the horizon (the 5 s recovery scan skips
    // a transaction that is still loaded). 471 of the first 2,000 seeds catch it; this is the
    // smallest whose history has no clock step and no permanent fault (one early timer only).
    [InlineData(2)]
    // MessageMachine let an operator abort a prepared message although its sender may already have
    // committed (and crashed, or lost its submit, before submitting): m3's sender commits, its
    // submits are lost, the operator's abort is accepted, the customer is charged and nothing is
    // delivered. 122 of the first 2,000 seeds catch it; CanAbort is now false for a message
    // (MessageMachineTests.Decide_OperatorAbort_IsRefused_EvenWhilePrepared_...).
    [InlineData(6)]
    public void RegressionSeeds(int seed)
    {
        var result = SimulationRun.Execute(new SimOptions(seed));
        result.Ok.ShouldBeTrue(result.Report());
    }

    [Fact]
    public void SameSeed_ProducesTheSameTrace()
    {
        // Every seed runs every protocol; 7: a permanent fault and the operator's lift; the last
        // three: the partition mode and two known-bad variants (their violations included).
        SimOptions[] seeds =
        [
            new(0), new(1), new(7), new(12), new(42), new(4242), new(31337), new(2_000_001), new(99),
            new(3, Mode: SimMode.Partition), new(5, SimVariant.TwoPhaseResumeVoting), new(11, SimVariant.KeyPerAttempt),
        ];
        var runs = new SimResult[seeds.Length * 2];
        // Run the pairs at the same time on different threads: anything that leaked to the thread
        // pool or depended on timing would make the two traces of a seed differ.
        Parallel.For(0, runs.Length, i => runs[i] = SimulationRun.Execute(seeds[i / 2] with { KeepFullTrace = true }));
        for (var i = 0; i < seeds.Length; i++)
        {
            var (a, b) = (runs[2 * i], runs[2 * i + 1]);
            a.FullTrace.Count.ShouldBeGreaterThan(20);
            for (var line = 0; line < Math.Min(a.FullTrace.Count, b.FullTrace.Count); line++)
            {
                b.FullTrace[line].ShouldBe(a.FullTrace[line], $"seed {seeds[i]} diverged at trace line {line}");
            }

            b.FullTrace.Count.ShouldBe(a.FullTrace.Count, $"seed {seeds[i]}");
            b.TraceHash.ShouldBe(a.TraceHash);
        }

        // Between them, these seeds run every protocol.
        foreach (var protocol in new[] { "saga", "tcc", "2pc", "3pc", "msg" })
        {
            runs.Sum(r => r.Stats[$"{protocol} transactions"]).ShouldBeGreaterThan(0, protocol);
        }

        // Different seeds make different runs.
        runs.Select(r => r.TraceHash).Distinct().Count().ShouldBe(seeds.Length);
    }

    private void Replay(int seed)
    {
        var result = SimulationRun.Execute(SimEnvironment.Options(seed) with { KeepFullTrace = true });
        var path = Path.Combine(Path.GetTempPath(), $"treaty-sim-{seed.ToString(CultureInfo.InvariantCulture)}.trace");
        File.WriteAllLines(path, result.FullTrace);
        var text = string.Join('\n', result.FullTrace);
        output.WriteLine(text);
        Console.WriteLine(text);
        Say($"Seed {seed}: {(result.Ok ? "all invariants hold" : "VIOLATED")}; {result.Summary}; full trace in {path}");
        result.Ok.ShouldBeTrue(result.Report());
    }

    private void Say(string line)
    {
        output.WriteLine(line);
        Console.WriteLine(line);
    }
}

/// <summary>
/// The known-bad variants: broken systems the sweep must catch, each in at least 1% of the seeds
/// 0..1999 (20 failing seeds), so that a harness change that blinds it to a class of bugs fails here.
/// </summary>
public sealed class KnownBadVariantTests(ITestOutputHelper output)
{
    private const int Bound = 2_000;
    private const int MustCatch = 20;

    public static TheoryData<string> Variants => [.. SimVariants.All.Where(v => SimVariants.ModeFor(v.Variant) == SimMode.Normal).Select(v => v.Name)];

    [Theory]
    [MemberData(nameof(Variants))]
    public void Variant_IsCaughtByAtLeastOnePercentOfTheSeeds(string name)
    {
        var variant = SimVariants.Parse(name);
        var sweep = Sweep.Run(0, Bound, s => new SimOptions(s, variant, StopAtFirstViolation: true));
        var first = sweep.Failures.MinBy(r => r.Seed);
        var line = first is null
            ? $"{name}: caught by no seed of {Bound}"
            : $"{name}: caught by {sweep.Failures.Count} of {Bound} seeds (first: seed {first.Seed}) in {sweep.Elapsed.TotalSeconds:0.0}s: {first.Violations[0]}";
        output.WriteLine(line);
        Console.WriteLine(line);
        sweep.Failures.Count.ShouldBeGreaterThanOrEqualTo(MustCatch, $"{name} ({SimVariants.All.First(v => v.Name == name).Breaks}): the simulation barely sees this bug");
    }
}

/// <summary>
/// Skeen's 3PC is non-blocking, and the price is atomicity under partitions: a participant cut off
/// from the coordinator after it acknowledged preCommit commits on its own timeout, while the
/// coordinator, missing its acknowledgement, aborts everyone else.
/// </summary>
public sealed class ThreePhaseCommitPartitionTests(ITestOutputHelper output)
{
    private const int Bound = 2_000;

    [Fact]
    public void ThreePhaseCommit_UnderPartitions_MixesOutcomes()
    {
        var sweep = Sweep.Run(0, Bound, s => new SimOptions(s, Mode: SimMode.Partition), keep: r => r.Mixed.Count > 0);
        var mixed = sweep.Failures.Where(r => r.Mixed.Count > 0).OrderBy(r => r.Seed).ToList();
        var line = $"3PC partition mode: {mixed.Count} of {Bound} seeds end with a mixed 3PC outcome; {sweep.Stats["network partitions"]} partitions, {sweep.Stats["in-doubt 3pc-decided-alone"]} participants decided alone";
        output.WriteLine(line);
        Console.WriteLine(line);
        mixed.ShouldNotBeEmpty("3PC under partitions longer than the participants' timeout should be able to mix outcomes");

        // The first such seed's timeline (the search the demo runs finds the same seed, one seed after the other).
        var story = ThreePhasePartitionStory.FindFirst(0, Bound).ShouldNotBeNull();
        story.Seed.ShouldBe(mixed[0].Seed);
        var text = $"First seed with a mixed 3PC outcome: {story.Seed} ({story.Outcome.Gid}); found in {story.Elapsed.TotalMilliseconds:0} ms; replay: {story.Replay}\n{string.Join('\n', story.Timeline)}";
        output.WriteLine(text);
        Console.WriteLine(text);
        story.Outcome.Protocol.ShouldBe(Protocol.ThreePhaseCommit);
    }
}

/// <summary>What <c>treaty demo</c> shows of the partition mode: the search for the first mixed seed, its timeline, the filters.</summary>
public sealed class ThreePhasePartitionStoryTests
{
    [Fact]
    public void FindFirst_ReturnsTheFirstSeedWhose3pcMixesOutcomes_WithItsTimeline()
    {
        var story = ThreePhasePartitionStory.FindFirst(0, 500).ShouldNotBeNull();

        story.SeedsTried.ShouldBe(story.Seed + 1);
        story.Outcome.Protocol.ShouldBe(Protocol.ThreePhaseCommit);
        story.Outcome.Committed.ShouldNotBeEmpty();
        story.Outcome.NotCommitted.ShouldNotBeEmpty();
        story.Deterministic.ShouldBeTrue();
        story.Replay.ShouldStartWith($"TREATY_SIM_SEED={story.Seed} TREATY_SIM_VARIANT=partition ");
        story.Timeline.ShouldContain(l => l.Contains("PARTITION", StringComparison.Ordinal));
        story.Timeline.ShouldContain(l => l.Contains($" {story.Outcome.Gid}: atomicity (3pc) — MIXED", StringComparison.Ordinal));
        foreach (var branch in story.Outcome.Committed)
        {
            story.Timeline.ShouldContain(l => Of(l, story.Outcome.Gid, branch) && l.EndsWith(" captured", StringComparison.Ordinal), branch);
        }

        foreach (var branch in story.Outcome.NotCommitted)
        {
            story.Timeline.ShouldContain(l => Of(l, story.Outcome.Gid, branch) && l.EndsWith(" released", StringComparison.Ordinal), branch);
        }

        // Starting at the seed finds it at once, with the same timeline; no earlier seed mixes.
        var again = ThreePhasePartitionStory.FindFirst(story.Seed, 1).ShouldNotBeNull();
        again.Timeline.ShouldBe(story.Timeline);
        again.TraceHash.ShouldBe(story.TraceHash);
        if (story.Seed > 0)
        {
            ThreePhasePartitionStory.FindFirst(0, story.Seed).ShouldBeNull();
        }
    }

    [Fact]
    public void Shows_KeepsTheTransactionsEventsAndThePartitions_NotOtherTransactionsOrWaits()
    {
        ThreePhasePartitionStory.Shows("00003.902 sim       PARTITION: payment cut off from the coordinator for 14.9s", "tx2").ShouldBeTrue();
        ThreePhasePartitionStory.Shows("00015.698 payment#1 tx2.payment resolved locally: doCommit -> 200 captured", "tx2").ShouldBeTrue();
        ThreePhasePartitionStory.Shows("00019.560 payment#1 c75 tx2 payment.abort -> 409 ", "tx2").ShouldBeTrue();
        ThreePhasePartitionStory.Shows("00019.560 payment#1 c75 tx12 payment.abort -> 409 ", "tx1").ShouldBeFalse();
        ThreePhasePartitionStory.Shows("00004.770 inventory#1 q2 tx2.inventory answer Abort -> Wait", "tx2").ShouldBeFalse();
    }

    [Fact]
    public void Condense_FoldsRepeatsOfTheSameCall_KeepsEverythingElse()
    {
        string[] lines =
        [
            "00018.823 sim       partition of payment healed",
            "00019.560 payment#1 c75 tx2 payment.abort -> 409 ",
            "00020.084 payment#1 c76 tx2 payment.abort -> 409 ",
            "00020.346 payment#1 c74 tx2 payment.abort -> 409 ",
            "00020.400 order#1   c77 tx2 order.abort -> 200 released",
            "00020.614 payment#1 c78 tx2 payment.abort -> 409 ",
        ];

        ThreePhasePartitionStory.Condense(lines).ShouldBe(
        [
            "00018.823 sim       partition of payment healed",
            "00019.560 payment#1 c75 tx2 payment.abort -> 409 (×3, the last at 20.346 s)",
            "00020.400 order#1   c77 tx2 order.abort -> 200 released",
            "00020.614 payment#1 c78 tx2 payment.abort -> 409 ",
        ]);
    }

    /// <summary>A participant's line about a branch: its call (<c>tx2 payment.abort</c>) or its own decision (<c>tx2.payment resolved</c>).</summary>
    private static bool Of(string line, string gid, string branch) =>
        line.Contains($" {gid} {branch}.", StringComparison.Ordinal) || line.Contains($" {gid}.{branch} ", StringComparison.Ordinal);
}

/// <summary>Runs seeds in parallel and gathers what failed (or what <c>keep</c> selects), the events and the coverage.</summary>
internal sealed record Sweep(IReadOnlyList<SimResult> Failures, long Events, SimStats Stats, TimeSpan Elapsed, TimeSpan Cpu)
{
    public static Sweep Run(int from, int count, Func<int, SimOptions> options, Func<SimResult, bool>? keep = null)
    {
        var failures = new ConcurrentBag<SimResult>();
        long events = 0;
        var stats = new SimStats();
        var statsLock = new Lock();
        var clock = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        Parallel.For(from, from + count, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, s =>
        {
            var result = SimulationRun.Execute(options(s));
            Interlocked.Add(ref events, result.Events);
            lock (statsLock)
            {
                stats.AddAll(result.Stats);
            }

            if (keep?.Invoke(result) ?? !result.Ok)
            {
                failures.Add(result);
            }
        });
        clock.Stop();
        return new Sweep([.. failures], events, stats, clock.Elapsed, Process.GetCurrentProcess().TotalProcessorTime - cpu);
    }
}

internal static class SimEnvironment
{
    public static int? ReplaySeed => Parse("TREATY_SIM_SEED");

    public static int? Runs => Parse("TREATY_SIM_RUNS");

    /// <summary>TREATY_SIM_VARIANT replays a seed against a known-bad variant (to read how it was caught), in the 3PC partition mode, or in the choreography mode.</summary>
    public static SimOptions Options(int seed) => Environment.GetEnvironmentVariable("TREATY_SIM_VARIANT") switch
    {
        null or "" or "correct" => new SimOptions(seed),
        "partition" => new SimOptions(seed, Mode: SimMode.Partition),
        "choreography" => new SimOptions(seed, Mode: SimMode.Choreography),
        "multi" => new SimOptions(seed, Mode: SimMode.MultiCoordinator),
        var name => new SimOptions(seed, SimVariants.Parse(name), SimVariants.ModeFor(SimVariants.Parse(name))),
    };

    private static int? Parse(string name) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) ? value : null;
}
