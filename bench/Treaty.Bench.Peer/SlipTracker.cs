using System.Collections.Concurrent;
using MassTransit;
using MassTransit.Courier.Contracts;

namespace Treaty.Bench.Peer;

/// <summary>
/// The clients' side of the routing slip events: a client registers its tracking number before it executes the
/// slip, and the events consumer completes it on RoutingSlipCompleted (true) or on any other terminal event (false).
/// </summary>
internal sealed class SlipTracker
{
    private readonly ConcurrentDictionary<Guid, TaskCompletionSource<bool>> _pending = new();

    public Task<bool> Register(Guid trackingNumber)
    {
        var completion = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[trackingNumber] = completion;
        return completion.Task;
    }

    public void Forget(Guid trackingNumber) => _pending.TryRemove(trackingNumber, out _);

    /// <summary>Ends a slip; events of slips this run did not start (an earlier run's, on a shared broker) are ignored.</summary>
    public void End(Guid trackingNumber, bool completed)
    {
        if (_pending.TryRemove(trackingNumber, out var completion))
            completion.TrySetResult(completed);
    }
}

/// <summary>
/// Subscribes to the events Courier publishes when a routing slip has ended: completed; faulted (a step failed and the
/// steps before it were compensated); compensation failed (a compensation itself failed: Courier publishes this instead
/// of RoutingSlipFaulted, and a client waiting only for Faulted would hang); terminated (a step ended the slip early).
/// </summary>
internal sealed class SlipEventsConsumer(SlipTracker tracker) :
    IConsumer<RoutingSlipCompleted>, IConsumer<RoutingSlipFaulted>, IConsumer<RoutingSlipCompensationFailed>, IConsumer<RoutingSlipTerminated>
{
    public Task Consume(ConsumeContext<RoutingSlipCompleted> context)
    {
        tracker.End(context.Message.TrackingNumber, completed: true);
        return Task.CompletedTask;
    }

    public Task Consume(ConsumeContext<RoutingSlipFaulted> context)
    {
        tracker.End(context.Message.TrackingNumber, completed: false);
        return Task.CompletedTask;
    }

    public Task Consume(ConsumeContext<RoutingSlipCompensationFailed> context)
    {
        tracker.End(context.Message.TrackingNumber, completed: false);
        return Task.CompletedTask;
    }

    public Task Consume(ConsumeContext<RoutingSlipTerminated> context)
    {
        tracker.End(context.Message.TrackingNumber, completed: false);
        return Task.CompletedTask;
    }
}
