using RabbitMQ.Client;
using System.Collections.Concurrent;
using System.Text;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.RabbitMq.Tests;

/// <summary>One broker shared by the test classes that do not restart it; each test uses its own exchange.</summary>
[CollectionDefinition(Name)]
public sealed class SharedBrokerCollection : ICollectionFixture<RabbitMqBroker>
{
    public const string Name = "rabbitmq";
}

internal static class Messages
{
    public static TransportMessage New(string type, string? id = null, string correlationId = "order-1", string body = "{}") =>
        new(id ?? Guid.NewGuid().ToString("N"), type, correlationId, Encoding.UTF8.GetBytes(body),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "order", new DateTimeOffset(2026, 12, 6, 20, 0, 0, 123, TimeSpan.Zero));

    /// <summary>A fresh exchange name, so tests sharing a broker never see each other's messages.</summary>
    public static string Exchange() => "test." + Guid.NewGuid().ToString("N")[..10];

    public static RabbitMqTransportOptions Options(RabbitMqBroker broker, string exchange) => new()
    {
        Uri = broker.Uri,
        ExchangeName = exchange,
        RetryDelay = TimeSpan.FromSeconds(1),
        ConfirmTimeout = TimeSpan.FromSeconds(10),
        NetworkRecoveryInterval = TimeSpan.FromMilliseconds(500),
    };
}

/// <summary>Records every delivery a handler saw, with the time, and answers with a chosen outcome.</summary>
internal sealed class Recorder
{
    private readonly Func<TransportMessage, int, DeliveryOutcome> _answer;
    private readonly ConcurrentDictionary<string, int> _counts = new();

    public Recorder(Func<TransportMessage, int, DeliveryOutcome>? answer = null) =>
        _answer = answer ?? ((_, _) => DeliveryOutcome.Handled);

    public ConcurrentQueue<(TransportMessage Message, TimeSpan At)> Deliveries { get; } = new();

    public System.Diagnostics.Stopwatch Clock { get; } = System.Diagnostics.Stopwatch.StartNew();

    public int Count => Deliveries.Count;

    public IReadOnlyCollection<string> DistinctIds => [.. Deliveries.Select(d => d.Message.MessageId).Distinct()];

    public Task<DeliveryOutcome> Handle(TransportMessage message, CancellationToken cancellationToken)
    {
        var attempt = _counts.AddOrUpdate(message.MessageId, 1, (_, n) => n + 1);
        Deliveries.Enqueue((message, Clock.Elapsed));
        return Task.FromResult(_answer(message, attempt));
    }

    public async Task WaitUntil(Func<bool> condition, TimeSpan timeout, string what)
    {
        var deadline = Clock.Elapsed + timeout;
        while (!condition())
        {
            if (Clock.Elapsed > deadline)
                throw new TimeoutException($"{what} not reached within {timeout}; {Count} deliveries, {DistinctIds.Count} distinct");
            await Task.Delay(50);
        }
    }
}

/// <summary>A plain client channel for looking into queues the way an operator would.</summary>
internal sealed class RawChannel : IAsyncDisposable
{
    private readonly RabbitMQ.Client.IConnection _connection;

    private RawChannel(RabbitMQ.Client.IConnection connection, RabbitMQ.Client.IChannel channel)
    {
        _connection = connection;
        Channel = channel;
    }

    public RabbitMQ.Client.IChannel Channel { get; }

    public static async Task<RawChannel> OpenAsync(RabbitMqBroker broker)
    {
        var connection = await new RabbitMQ.Client.ConnectionFactory { Uri = broker.Uri }.CreateConnectionAsync();
        return new RawChannel(connection, await connection.CreateChannelAsync());
    }

    public async ValueTask DisposeAsync()
    {
        await Channel.DisposeAsync();
        await _connection.CloseAsync();
        await _connection.DisposeAsync();
    }
}
