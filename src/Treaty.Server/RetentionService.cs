using Treaty.Core.Engine;

namespace Treaty.Server;

/// <summary>
/// Deletes finished transactions (and their journal) once they are older than
/// <see cref="TreatyServerOptions.Retention"/>: every <see cref="TreatyServerOptions.RetentionInterval"/>
/// it purges in batches of <see cref="TreatyServerOptions.RetentionBatchSize"/>, pausing
/// <see cref="TreatyServerOptions.RetentionPause"/> between batches. Each batch is one write in the
/// store's group commit, so submits and decisions queued meanwhile share its turn instead of
/// waiting behind a long delete. Registered only when retention is on.
/// </summary>
internal sealed partial class RetentionService(
    ITransactionStore store,
    TreatyServerOptions options,
    TreatyTelemetry telemetry,
    TimeProvider time,
    ILogger<RetentionService> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var retention = options.Retention ?? throw new InvalidOperationException("Retention is off; the service should not run.");
        try
        {
            using var timer = new PeriodicTimer(options.RetentionInterval, time);
            do
            {
                try
                {
                    await PurgeAsync(time.GetUtcNow() - retention, stoppingToken);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogPurgeFailed(logger, ex);
                }
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // shutting down
        }
    }

    /// <summary>Purges everything finished before <paramref name="cutoff"/>, batch by batch; returns how many went.</summary>
    /// <remarks>The cutoff is fixed for the pass, so a pass ends even while transactions keep finishing.</remarks>
    internal async Task<long> PurgeAsync(DateTimeOffset cutoff, CancellationToken cancellationToken)
    {
        long total = 0;
        while (true)
        {
            var deleted = await store.PurgeFinishedAsync(cutoff, options.RetentionBatchSize, cancellationToken);
            total += deleted;
            telemetry.Purged(deleted);
            if (deleted < options.RetentionBatchSize)
            {
                break;
            }

            await Task.Delay(options.RetentionPause, time, cancellationToken);
        }

        if (total > 0)
        {
            LogPurged(logger, total, cutoff);
        }

        return total;
    }

    [LoggerMessage(EventId = 2011, Level = LogLevel.Information, Message = "Retention: deleted {Count} transactions finished before {Cutoff:O}")]
    private static partial void LogPurged(ILogger logger, long count, DateTimeOffset cutoff);

    [LoggerMessage(EventId = 2012, Level = LogLevel.Warning, Message = "Retention pass failed; the next pass tries again")]
    private static partial void LogPurgeFailed(ILogger logger, Exception exception);
}
