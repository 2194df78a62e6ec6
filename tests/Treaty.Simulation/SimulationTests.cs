using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Treaty.Simulation.Harness;
using Xunit.Abstractions;

namespace Treaty.Simulation;

/// <summary>
/// The real engine under injected faults, one seed per run. <c>TREATY_SIM_SEED=n</c> replays one
/// seed with its full trace; <c>TREATY_SIM_RUNS=n</c> sets how many seeds the sweep covers.
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
        var failures = new ConcurrentBag<SimResult>();
        long events = 0;
        var stats = SimStats.Zero;
        var statsLock = new Lock();
        var clock = Stopwatch.StartNew();
        Parallel.For(0, runs, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, s =>
        {
            var result = SimulationRun.Execute(new SimOptions(s));
            Interlocked.Add(ref events, result.Events);
            lock (statsLock)
            {
                stats += result.Stats;
            }

            if (!result.Ok)
            {
                failures.Add(result);
            }
        });
        clock.Stop();

        var rate = runs / clock.Elapsed.TotalSeconds;
        Say(string.Create(CultureInfo.InvariantCulture,
            $"Simulation: {runs} seeds in {clock.Elapsed.TotalSeconds:0.0}s = {rate:0} seeds/s ({events / clock.Elapsed.TotalSeconds:0} events/s, {Environment.ProcessorCount} threads), {failures.Count} failed"));
        Say($"Coverage: {stats}");
        if (!failures.IsEmpty)
        {
            var first = failures.MinBy(f => f.Seed)!;
            var seeds = string.Join(", ", failures.Select(f => f.Seed).Order().Take(50));
            Assert.Fail($"{failures.Count} of {runs} seeds failed (first 50: {seeds}).\n{first.Report()}");
        }
    }

    /// <summary>
    /// Seeds that always run. Add every seed that finds a real bug here (with a comment naming the
    /// bug). Besides those, it holds the seeds whose histories caught the known-bad variants (an
    /// abort after a call made before its decision was durable, with act-before-persist: 1; a
    /// payment left uncompensated by skip-compensation, and a second saga for one idempotency key
    /// with gid-per-attempt: 0; a lost early wake-up: 6; an action arriving after its null
    /// compensation: 8), replayed against the correct system, plus the seed the docs use (42).
    /// A seed means the same history only for the same workload generator and fault mix: when they
    /// change, re-check each one reproduces its history.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(6)]
    [InlineData(8)]
    [InlineData(42)]
    // The engine bug "a timer that fires a hair early is never re-armed": with the no-op branch of
    // TransactionEngine.DecideAndPersistAsync not calling Schedule(_state.NextWakeAt), the timer of
    // tx5's inventory.compensate#4 fires 1.991 ms early (at 7.409 s), the decision changes nothing,
    // the retry never happens and tx5 stays aborting for 12 virtual hours (the 5 s recovery scan
    // skips a transaction that is still loaded). Caught by 347 of the first 2,000 seeds; this is the
    // smallest whose history has no clock step and no permanent fault (early timers only).
    // (Before the checkout path went through the Order participant, the same bug was seed 20.)
    [InlineData(12)]
    public void RegressionSeeds(int seed)
    {
        var result = SimulationRun.Execute(new SimOptions(seed));
        result.Ok.ShouldBeTrue(result.Report());
    }

    [Fact]
    public void SameSeed_ProducesTheSameTrace()
    {
        // 7: a permanent fault, stuck transactions, the operator's lift and retry; 12: early timers.
        int[] seeds = [0, 1, 7, 12, 42, 4242, 31337, 2_000_001, 99];
        var runs = new SimResult[seeds.Length * 2];
        // Run the pairs at the same time on different threads: anything that leaked to the thread
        // pool or depended on timing would make the two traces of a seed differ.
        Parallel.For(0, runs.Length, i => runs[i] = SimulationRun.Execute(new SimOptions(seeds[i / 2], KeepFullTrace: true)));
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

        // Different seeds make different runs.
        runs.Select(r => r.TraceHash).Distinct().Count().ShouldBe(seeds.Length);
    }

    private void Replay(int seed)
    {
        var result = SimulationRun.Execute(SimEnvironment.Variant(seed) with { KeepFullTrace = true });
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

/// <summary>The known-bad variants: the harness must catch each within a bounded number of seeds.</summary>
public sealed class KnownBadVariantTests(ITestOutputHelper output)
{
    private const int Bound = 2_000;

    [Fact]
    public void ActingBeforePersisting_IsCaught() =>
        Find("UnsafeActBeforePersist", s => new SimOptions(s, ActBeforePersist: true));

    [Fact]
    public void SkippingACompensation_IsCaught() =>
        Find("SkipCompensation(payment)", s => new SimOptions(s, SkipCompensation: true));

    [Fact]
    public void ParticipantWithoutHangingPrevention_IsCaught() =>
        Find("NoHangingPrevention", s => new SimOptions(s, NoHangingPrevention: true));

    [Fact]
    public void LosingAnEarlyWakeUp_IsCaught() =>
        Find("LoseEarlyWakeUp", s => new SimOptions(s, LoseEarlyWakeUp: true));

    [Fact]
    public void CheckoutMintingAGidPerAttempt_IsCaught() =>
        Find("GidPerAttempt", s => new SimOptions(s, GidPerAttempt: true));

    private void Find(string variant, Func<int, SimOptions> options)
    {
        var chunk = Environment.ProcessorCount * 8;
        for (var start = 0; start < Bound; start += chunk)
        {
            var found = new ConcurrentBag<SimResult>();
            Parallel.For(start, Math.Min(Bound, start + chunk), s =>
            {
                var result = SimulationRun.Execute(options(s));
                if (!result.Ok)
                {
                    found.Add(result);
                }
            });
            if (!found.IsEmpty)
            {
                var first = found.MinBy(r => r.Seed)!;
                var line = $"{variant}: caught by seed {first.Seed} (searched seeds < {start + chunk}): {first.Violations[0]}";
                output.WriteLine(line);
                Console.WriteLine(line);
                return;
            }
        }

        Assert.Fail($"{variant}: no violation found in {Bound} seeds; the simulation cannot see this bug.");
    }
}

internal static class SimEnvironment
{
    public static int? ReplaySeed => Parse("TREATY_SIM_SEED");

    public static int? Runs => Parse("TREATY_SIM_RUNS");

    /// <summary>TREATY_SIM_VARIANT replays a seed against a known-bad variant (to read how it was caught).</summary>
    public static SimOptions Variant(int seed) => Environment.GetEnvironmentVariable("TREATY_SIM_VARIANT") switch
    {
        null or "" => new SimOptions(seed),
        "act-before-persist" => new SimOptions(seed, ActBeforePersist: true),
        "skip-compensation" => new SimOptions(seed, SkipCompensation: true),
        "no-hanging-prevention" => new SimOptions(seed, NoHangingPrevention: true),
        "lose-early-wakeup" => new SimOptions(seed, LoseEarlyWakeUp: true),
        "gid-per-attempt" => new SimOptions(seed, GidPerAttempt: true),
        var other => throw new ArgumentException($"TREATY_SIM_VARIANT={other}: use act-before-persist, skip-compensation, no-hanging-prevention, lose-early-wakeup or gid-per-attempt."),
    };

    private static int? Parse(string name) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) ? value : null;
}
