using Treaty.Core.Engine;

namespace Treaty.Server;

/// <summary>
/// On start, resumes every transaction that is not terminal (a crash left them mid-flight); then,
/// periodically, anything due that no runner holds (for example after a failed write).
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
            var resumed = await ResumeDueAsync(DateTimeOffset.MaxValue, int.MaxValue, stoppingToken);
            LogStartupRecovery(logger, resumed);
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

    /// <summary>Resumes due transactions; returns how many it handed to the engine.</summary>
    internal async Task<int> ResumeDueAsync(DateTimeOffset dueBy, int max, CancellationToken cancellationToken)
    {
        var gids = await store.ListDueAsync(dueBy, Math.Min(max, 100_000), cancellationToken);
        // In parallel: each resume persists a decision, and concurrent writes share a group commit.
        await Parallel.ForEachAsync(
            gids,
            new ParallelOptions { MaxDegreeOfParallelism = ResumeParallelism, CancellationToken = cancellationToken },
            async (gid, ct) => await engine.ResumeAsync(gid, ct));
        return gids.Count;
    }

    [LoggerMessage(EventId = 2002, Level = LogLevel.Information, Message = "Recovery: resumed {Count} unfinished transactions")]
    private static partial void LogStartupRecovery(ILogger logger, int count);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Warning, Message = "Recovery scan failed")]
    private static partial void LogScanFailed(ILogger logger, Exception exception);
}

/// <summary>Creates or migrates the store's schema before anything else starts.</summary>
internal sealed class StoreInitializer(ITransactionStore store) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken) => store.InitializeAsync(cancellationToken);

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
