namespace Treaty.Simulation.Harness;

/// <summary>
/// Virtual time. A timer belongs to the node that created it: it fires through the scheduler in
/// that node, and never after the node crashed.
/// </summary>
internal sealed class SimTimeProvider(SimScheduler scheduler) : TimeProvider
{
    public override DateTimeOffset GetUtcNow() => scheduler.Now;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override long GetTimestamp() => SimScheduler.Epoch.UtcTicks + scheduler.NowTicks;

    public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new SimTimer(scheduler, SimNode.Here, callback, state);
        timer.Change(dueTime, period);
        return timer;
    }

    private sealed class SimTimer(SimScheduler scheduler, SimNode node, TimerCallback callback, object? state) : ITimer
    {
        private long _generation;
        private TimeSpan _period = Timeout.InfiniteTimeSpan;
        private bool _disposed;

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            if (_disposed)
            {
                return false;
            }

            // A new generation invalidates whatever was queued for the old due time.
            var generation = ++_generation;
            _period = period;
            if (dueTime != Timeout.InfiniteTimeSpan)
            {
                scheduler.Post(node, dueTime, s => Fire(generation), null);
            }

            return true;
        }

        private void Fire(long generation)
        {
            if (_disposed || generation != _generation)
            {
                return;
            }

            if (_period != Timeout.InfiniteTimeSpan && _period > TimeSpan.Zero)
            {
                var next = ++_generation;
                scheduler.Post(node, _period, s => Fire(next), null);
            }

            callback(state);
        }

        public void Dispose()
        {
            _disposed = true;
            _generation++;
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
