using Treaty.Messaging.Transport;

namespace Shop.Infrastructure;

/// <summary>Where a message hold stops the choreography's messaging.</summary>
internal enum MessageHoldPoint
{
    /// <summary>A consumer: its inbox transaction committed the delivery, the transport has not been told (no HTTP answer, no basic.ack).</summary>
    AfterCommit,

    /// <summary>The outbox relay: the transport took the message, its outbox row is not marked sent yet.</summary>
    AfterSend,
}

/// <summary>One message hold: armed until the next message of its type reaches its point, then the id it holds.</summary>
internal sealed record MessageHoldView(string MessageType, string At, bool Armed, string? HeldMessageId)
{
    public static string NameOf(MessageHoldPoint at) => at == MessageHoldPoint.AfterCommit ? "afterCommit" : "afterSend";
}

/// <summary>
/// The choreography's crash points for tests (only with <c>--faults</c>): the service's
/// <see cref="IMessageTransport"/> is decorated so that an armed hold (<c>holdAfterCommit</c>,
/// <c>holdAfterSend</c>, see <see cref="FaultRegistry"/>) stops the delivery or the relay exactly
/// there, and a test kills the process (SIGKILL) while it waits. Without an armed hold the decorator
/// only counts the deliveries (<c>GET /_faults/calls?path=message:TYPE</c>: calls, and deliveries
/// whose handler ran and committed rather than being dropped by the inbox as a duplicate).
/// </summary>
internal static class MessageFaults
{
    /// <summary>The counter of deliveries of <paramref name="type"/>, next to the paths' counters.</summary>
    public static string CounterOf(string type) => "message:" + type;

    /// <summary>Decorates the registered <see cref="IMessageTransport"/> (registered last, so it is the one the kit resolves).</summary>
    public static void Decorate(IServiceCollection services)
    {
        var inner = services.LastOrDefault(d => d.ServiceType == typeof(IMessageTransport))
            ?? throw new InvalidOperationException("No message transport is registered to decorate.");
        if (inner.ImplementationFactory is not { } factory)
        {
            throw new InvalidOperationException($"The message transport is registered without a factory ({inner}); cannot decorate it.");
        }

        services.Remove(inner);
        services.AddSingleton<IMessageTransport>(provider =>
            new FaultingTransport((IMessageTransport)factory(provider), provider.GetRequiredService<FaultRegistry>()));
    }

    /// <summary>The transport under the decorator, if any (the RabbitMQ queues declarer needs the real one).</summary>
    public static IMessageTransport Unwrap(IMessageTransport transport) => transport is FaultingTransport faulting ? faulting.Inner : transport;

    /// <summary>Called by the Shop's consumers when they run (inside the inbox transaction): the delivery was not a duplicate.</summary>
    public static void ConsumerRan() => DeliveryProbe.Current.Value?.MarkRan();
}

/// <summary>Set by the decorator around one delivery; the consumer marks it when it runs (an async-local flows down to it, not back up).</summary>
internal sealed class DeliveryProbe
{
    public static readonly AsyncLocal<DeliveryProbe?> Current = new();

    public bool Ran { get; private set; }

    public void MarkRan() => Ran = true;
}

/// <summary>The transport with the crash points of <see cref="MessageFaults"/>.</summary>
internal sealed class FaultingTransport(IMessageTransport inner, FaultRegistry registry) : IMessageTransport
{
    public IMessageTransport Inner => inner;

    public string Name => inner.Name;

    public async Task SendAsync(IReadOnlyList<TransportMessage> messages, CancellationToken cancellationToken)
    {
        await inner.SendAsync(messages, cancellationToken);
        foreach (var message in messages)
        {
            if (registry.TryHold(MessageHoldPoint.AfterSend, message.Type, message.MessageId) is { } held)
            {
                // The transport holds the message; the relay marks its row sent only when this returns.
                await held.WaitAsync(cancellationToken);
            }
        }
    }

    public Task<IAsyncDisposable> SubscribeAsync(Subscription subscription, MessageHandler handler, CancellationToken cancellationToken) =>
        inner.SubscribeAsync(subscription, async (message, ct) =>
        {
            var probe = new DeliveryProbe();
            DeliveryProbe.Current.Value = probe;
            var outcome = await handler(message, ct);
            registry.CountDelivery(message.Type, applied: probe.Ran && outcome == DeliveryOutcome.Handled);
            if (outcome == DeliveryOutcome.Handled && registry.TryHold(MessageHoldPoint.AfterCommit, message.Type, message.MessageId) is { } held)
            {
                // The inbox row and the effect are committed; the transport acknowledges only when this returns.
                await held.WaitAsync(ct);
            }

            return outcome;
        }, cancellationToken);

    public ValueTask DisposeAsync() => inner.DisposeAsync();
}
