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
