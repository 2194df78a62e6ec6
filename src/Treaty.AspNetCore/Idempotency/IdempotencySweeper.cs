using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>
/// Creates the key table when the host starts, then deletes expired keys every
/// <see cref="IdempotencyOptions.SweepInterval"/> (on the <see cref="TimeProvider"/>'s clock).
/// An expired key is already treated as absent; the sweeper only reclaims space.
/// </summary>
internal sealed partial class IdempotencySweeper(
    IdempotencyStore store,
    IOptions<IdempotencyOptions> options,
    TimeProvider time,
    ILogger<IdempotencySweeper> logger) : BackgroundService
{
    private PeriodicTimer? _timer;

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        await store.EnsureSchemaAsync(cancellationToken);

        // created here, not in ExecuteAsync (which runs on a background thread), so a tick is never
        // missed by a clock that moves right after start
        _timer = new PeriodicTimer(options.Value.SweepInterval, time);
        await base.StartAsync(cancellationToken);
    }

    public override void Dispose()
    {
        _timer?.Dispose();
        base.Dispose();
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var timer = _timer ?? throw new InvalidOperationException("The sweeper was not started.");
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    var deleted = await store.SweepAsync(time.GetUtcNow(), stoppingToken);
                    LogSwept(logger, deleted);
                }
                catch (Exception exception) when (exception is not OperationCanceledException)
                {
                    // the next tick tries again; expired keys are ignored meanwhile
                    LogSweepFailed(logger, exception);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // stopping
        }
    }

    [LoggerMessage(EventId = 4110, Level = LogLevel.Debug, Message = "Idempotency sweeper deleted {Count} expired keys")]
    private static partial void LogSwept(ILogger logger, int count);

    [LoggerMessage(EventId = 4111, Level = LogLevel.Warning, Message = "Idempotency sweeper failed; it retries at the next interval")]
    private static partial void LogSweepFailed(ILogger logger, Exception exception);
}
