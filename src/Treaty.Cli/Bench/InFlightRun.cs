using System.Diagnostics;
using Treaty.Client;

namespace Treaty.Cli.Bench;

/// <summary>What <c>treaty bench --in-flight N</c> measured.</summary>
/// <param name="InFlight">Sagas submitted and held.</param>
/// <param name="Held">Calls the participant held at once when the memory was read (the coordinator
/// opens at most its <c>MaxConnectionsPerParticipant</c> connections; the rest of the sagas wait in
/// the coordinator for one).</param>
/// <param name="RssMb">The coordinator's resident set with every saga in flight, MiB (the largest instance's).</param>
/// <param name="SubmitSeconds">From the first submit to the last answer.</param>
/// <param name="DrainSeconds">From opening the gate to every saga committed.</param>
/// <param name="Committed">Held sagas that committed.</param>
/// <param name="Errors">Submits refused or failed, plus sagas that ended otherwise or not in time.</param>
/// <param name="FirstError">What the first failure was.</param>
internal sealed record InFlightResult(
    int InFlight, int Held, double RssMb, double SubmitSeconds, double DrainSeconds, long Committed, long Errors, string? FirstError);

/// <summary>
/// Many sagas in flight at once: <c>N</c> sagas submitted without waiting, each one's first call held
/// by the participant (<see cref="NoOpParticipant.HoldGate"/>); once every one is in the coordinator
/// and the participant's held calls stop growing, the coordinators' resident sets are read; then the
/// gate opens and every saga must commit.
/// </summary>
internal static class InFlightRun
{
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan DrainLimit = TimeSpan.FromMinutes(10);
    private static readonly TimeSpan SettleLimit = TimeSpan.FromMinutes(1);

    /// <param name="count">Sagas to hold in flight.</param>
    /// <param name="submitters">Clients submitting them.</param>
    /// <param name="workload">Where the sagas go.</param>
    /// <param name="holds">The participant's gate.</param>
    /// <param name="http">The bench's HTTP client.</param>
    /// <param name="coordinatorPids">The coordinator processes, whose memory is read.</param>
    /// <param name="cancellationToken">Stops everything (Ctrl+C).</param>
    public static async Task<InFlightResult> RunAsync(
        int count, int submitters, BenchWorkload workload, NoOpParticipant.HoldGate holds, HttpClient http,
        IReadOnlyList<int> coordinatorPids, CancellationToken cancellationToken)
    {
        var run = Guid.NewGuid().ToString("N")[..12];
        var errors = 0L;
        string? firstError = null;
        void Fail(string error)
        {
            Interlocked.Increment(ref errors);
            Interlocked.CompareExchange(ref firstError, error, null);
        }

        var next = -1L;
        var submitClock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, Math.Min(submitters, count)).Select(_ => Task.Run(async () =>
        {
            for (var i = Interlocked.Increment(ref next); i < count; i = Interlocked.Increment(ref next))
            {
                try
                {
                    if (await workload.SubmitOnlyAsync(http, i, workload.HoldBody(run, i), cancellationToken) is { } error)
                    {
                        Fail(error);
                    }
                }
                catch (Exception ex) when (ex is HttpRequestException or IOException
                    || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
                {
                    Fail(ex is OperationCanceledException ? "submit timed out" : ex.Message);
                }
            }
        }, CancellationToken.None)));
        var submitSeconds = submitClock.Elapsed.TotalSeconds;

        // Every saga is in the coordinator; wait until the calls reaching the participant stop growing.
        var held = holds.Held;
        var settling = Stopwatch.StartNew();
        while (true)
        {
            await Task.Delay(Settle, TimeProvider.System, cancellationToken);
            var now = holds.Held;
            if (now == held && now > 0)
            {
                break;
            }

            if (settling.Elapsed > SettleLimit)
            {
                firstError ??= $"the participant held {now} call(s), still changing after {SettleLimit.TotalMinutes:0} min: the sagas are not in flight as asked";
                errors++;
                break;
            }

            held = now;
        }

        var rssMb = coordinatorPids.Max(ProcessStats.RssMb);

        holds.Open();
        var drainClock = Stopwatch.StartNew();
        // One database: any instance counts them all (SQLite has one instance).
        using var countHttp = new HttpClient { BaseAddress = new Uri(workload.CoordinatorUrls[0]), Timeout = TimeSpan.FromSeconds(60) };
        var coordinator = new TreatyClient(countHttp);
        var query = new TransactionListQuery { GidContains = $"hold-{run}-" };
        long committed = 0, ended = 0;
        while (drainClock.Elapsed < DrainLimit)
        {
            var counts = await coordinator.CountAsync(query, cancellationToken);
            committed = counts.ByStatus.GetValueOrDefault(BenchWorkload.Committed);
            ended = committed + counts.ByStatus.GetValueOrDefault("aborted");
            if (ended >= counts.Total && counts.Total > 0)
            {
                break;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(200), TimeProvider.System, cancellationToken);
        }

        var drainSeconds = drainClock.Elapsed.TotalSeconds;
        var missing = count - errors - committed;
        if (missing > 0)
        {
            firstError ??= $"{missing} held saga(s) did not commit ({ended - committed} aborted, the rest not ended after {DrainLimit.TotalMinutes:0} min)";
            errors += missing;
        }

        return new InFlightResult(count, held, rssMb, submitSeconds, drainSeconds, committed, errors, firstError);
    }
}
