using System.Threading.Channels;

namespace Treaty.Messaging;

/// <summary>
/// Wakes a background loop early (after a commit that gave it work) instead of at its next poll.
/// Signals coalesce: many before one wait wake it once.
/// </summary>
internal sealed class WakeSignal
{
    private readonly Channel<bool> _signals = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });

    public void Set() => _signals.Writer.TryWrite(true);

    /// <summary>Waits until <see cref="Set"/>, <paramref name="wait"/> has passed on <paramref name="time"/>, or <paramref name="stoppingToken"/>; never throws for those.</summary>
    public async Task WaitAsync(TimeSpan wait, TimeProvider time, CancellationToken stoppingToken)
    {
        if (wait <= TimeSpan.Zero)
        {
            return;
        }

        using var timeout = new CancellationTokenSource(wait, time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, stoppingToken);
        try
        {
            await _signals.Reader.WaitToReadAsync(linked.Token);
            _signals.Reader.TryRead(out _);
        }
        catch (OperationCanceledException)
        {
            // the wait is over, or the host is stopping; the loop decides.
        }
    }
}

/// <summary>
/// The loop of the relay and the reporter: run a pass; run the next at once when the pass says more
/// is waiting, else wait for the wake signal or the pass's wait. A pass that throws (the database,
/// not the far end) is waited out with the backoff, so a wake signal cannot make a hot loop.
/// </summary>
internal static class PollingLoop
{
    /// <param name="pass">One pass: null to run again at once, else how long to wait at most.</param>
    /// <param name="backoff">The wait after the n-th failed pass in a row.</param>
    /// <param name="failed">Logs a failed pass (the exception, failures in a row, the wait).</param>
    /// <param name="wake">Ends a wait early.</param>
    /// <param name="time">The clock of the waits.</param>
    /// <param name="stoppingToken">Ends the loop.</param>
    public static async Task RunAsync(
        Func<CancellationToken, Task<TimeSpan?>> pass, Func<int, TimeSpan> backoff, Action<Exception, int, TimeSpan> failed,
        WakeSignal wake, TimeProvider time, CancellationToken stoppingToken)
    {
        var failures = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            TimeSpan wait;
            try
            {
                var next = await pass(stoppingToken);
                failures = 0;
                if (next is not { } pause)
                {
                    continue; // more may be waiting
                }

                wait = pause;
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception exception)
            {
                failures++;
                wait = backoff(failures);
                failed(exception, failures, wait);
                try
                {
                    await Task.Delay(wait, time, stoppingToken);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                continue;
            }

            await wake.WaitAsync(wait, time, stoppingToken);
        }
    }
}
