using Treaty.Messaging.Transport;

namespace Treaty.Messaging.Tests.Support;

/// <summary>
/// A hand-written transport for the guarantee tests: SendAsync runs the subscribed handlers in the
/// caller's flow and throws unless every one acknowledged, like the embedded transport without the
/// HTTP. <see cref="CrashAfterNextSend"/> makes the next SendAsync deliver and then fail, as a relay
/// that dies between the send and marking the row sent.
/// </summary>
internal sealed class InMemoryTransport : IMessageTransport
{
    private readonly Lock _lock = new();
    private readonly List<(Subscription Subscription, MessageHandler Handler)> _handlers = [];
    private bool _disposed;

    public string Name => "in-memory";

    public bool CrashAfterNextSend { get; set; }

    /// <summary>How many of the next SendAsync calls fail before delivering anything (a subscriber or broker unreachable).</summary>
    public int FailNextSends { get; set; }

    public int SendCalls { get; private set; }

    public List<TransportMessage> Sent { get; } = [];

    public async Task SendAsync(IReadOnlyList<TransportMessage> messages, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        SendCalls++;
        if (FailNextSends > 0)
        {
            FailNextSends--;
            throw new HttpRequestException("connection refused (simulated)");
        }

        foreach (var message in messages)
        {
            List<MessageHandler> handlers;
            lock (_lock)
            {
                Sent.Add(message);
                handlers = [.. _handlers.Where(entry => entry.Subscription.Types.Contains(message.Type)).Select(entry => entry.Handler)];
            }

            foreach (var handler in handlers)
            {
                if (await handler(message, cancellationToken) == DeliveryOutcome.Retry)
                {
                    throw new InvalidOperationException($"{message.MessageId} not acknowledged");
                }
            }
        }

        if (CrashAfterNextSend)
        {
            CrashAfterNextSend = false;
            throw new IOException("simulated crash after the send, before the outbox row is marked sent");
        }
    }

    public Task<IAsyncDisposable> SubscribeAsync(Subscription subscription, MessageHandler handler, CancellationToken cancellationToken)
    {
        var entry = (subscription, handler);
        lock (_lock)
        {
            _handlers.Add(entry);
        }

        return Task.FromResult<IAsyncDisposable>(new Unsubscribe(() =>
        {
            lock (_lock)
            {
                _handlers.Remove(entry);
            }
        }));
    }

    public ValueTask DisposeAsync()
    {
        _disposed = true;
        return ValueTask.CompletedTask;
    }

    private sealed class Unsubscribe(Action action) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            action();
            return ValueTask.CompletedTask;
        }
    }
}
