namespace Treaty.Server.Tests.Support;

/// <summary>
/// The system clock, with timers that fire a few milliseconds before their due time, as .NET timers
/// do on Linux (they run on a coarse monotonic tick and truncate sub-millisecond due times), so
/// that a timer can fire before the wall clock reaches the instant it was armed for.
/// </summary>
public sealed class EarlyTimers(TimeSpan early) : TimeProvider
{
    public override DateTimeOffset GetUtcNow() => System.GetUtcNow();

    public override long GetTimestamp() => System.GetTimestamp();

    public override long TimestampFrequency => System.TimestampFrequency;

    public override TimeZoneInfo LocalTimeZone => System.LocalTimeZone;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) =>
        new Early(System.CreateTimer(callback, state, Shift(dueTime), period), this);

    private TimeSpan Shift(TimeSpan due) =>
        due == Timeout.InfiniteTimeSpan ? due : due > early ? due - early : TimeSpan.Zero;

    private sealed class Early(ITimer inner, EarlyTimers owner) : ITimer
    {
        public bool Change(TimeSpan dueTime, TimeSpan period) => inner.Change(owner.Shift(dueTime), period);

        public void Dispose() => inner.Dispose();

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
