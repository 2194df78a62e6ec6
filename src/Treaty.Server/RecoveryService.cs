using Treaty.Core.Engine;

namespace Treaty.Server;

/// <summary>
/// On start, claims and resumes every unfinished transaction nobody holds (a crash left them
/// mid-flight; with several instances, those of an instance that died, once its leases expire);
/// then, periodically, anything due that nobody holds. On stop, gives this instance's leases back
/// so the others take its transactions over at once.
/// </summary>
internal sealed partial class RecoveryService(
    ITransactionStore store,
    TransactionEngine engine,
    TreatyServerOptions options,
    TimeProvider time,
    ILogger<RecoveryService> logger) : BackgroundService
{
    private const int Batch = 1000;
    private const int ResumeParallelism = 64;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            var resumed = await ResumeDueAsync(DateTimeOffset.MaxValue, 100_000, stoppingToken);
            LogStartupRecovery(logger, resumed, engine.Lease.Owner);
            using var timer = new PeriodicTimer(options.RecoveryInterval, time);
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    await ResumeDueAsync(time.GetUtcNow(), Batch, stoppingToken);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogScanFailed(logger, ex);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // shutting down
        }
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);
        try
        {
            await engine.ReleaseAllAsync(cancellationToken);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // The leases expire on their own.
            LogReleaseFailed(logger, ex);
        }
    }

    /// <summary>Claims due transactions nobody holds and resumes them; returns how many it claimed.</summary>
    internal async Task<int> ResumeDueAsync(DateTimeOffset dueBy, int max, CancellationToken cancellationToken)
    {
        var claims = await store.ClaimDueAsync(engine.Lease, dueBy, max, cancellationToken);
        // In parallel: each resume persists a decision, and concurrent writes share a group commit.
        await Parallel.ForEachAsync(
            claims,
            new ParallelOptions { MaxDegreeOfParallelism = ResumeParallelism, CancellationToken = cancellationToken },
            async (claim, ct) => await engine.ResumeClaimedAsync(claim, ct));
        return claims.Count;
    }

    [LoggerMessage(EventId = 2002, Level = LogLevel.Information, Message = "Recovery: resumed {Count} unfinished transactions (instance {Owner})")]
    private static partial void LogStartupRecovery(ILogger logger, int count, string owner);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Warning, Message = "Recovery scan failed")]
    private static partial void LogScanFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Warning, Message = "Giving the leases back at shutdown failed; they expire on their own")]
    private static partial void LogReleaseFailed(ILogger logger, Exception exception);
}

/// <summary>Creates or migrates the store's schema before anything else starts.</summary>
internal sealed class StoreInitializer(ITransactionStore store) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken) => store.InitializeAsync(cancellationToken);

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
