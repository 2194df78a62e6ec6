using RabbitMQ.Client;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.RabbitMq;

/// <summary>
/// The names and arguments of everything the transport declares. One durable topic exchange for the events;
/// per subscriber a durable main queue bound to its types, a retry queue that holds a rejected delivery for the
/// retry delay and then dead-letters it back to the main queue, and a dead-letter queue; one direct exchange
/// (<c>{exchange}.dlx</c>) routes the rejected deliveries to the retry queues and the given-up ones to the
/// dead-letter queues.
/// </summary>
internal static class RabbitMqTopology
{
    public const string DeadLetterExchangeSuffix = ".dlx";

    public static string DeadLetterExchange(string exchange) => exchange + DeadLetterExchangeSuffix;

    public static string MainQueue(string exchange, string subscriber) => $"{exchange}.{subscriber}";

    public static string RetryQueue(string mainQueue) => mainQueue + ".retry";

    public static string DeadLetterQueue(string mainQueue) => mainQueue + ".dead-letter";

    public static async Task DeclareExchangesAsync(IChannel channel, string exchange, CancellationToken cancellationToken)
    {
        await channel.ExchangeDeclareAsync(exchange, ExchangeType.Topic, durable: true, autoDelete: false, arguments: null, cancellationToken: cancellationToken);
        await channel.ExchangeDeclareAsync(DeadLetterExchange(exchange), ExchangeType.Direct, durable: true, autoDelete: false, arguments: null, cancellationToken: cancellationToken);
    }

    /// <summary>Declares the subscriber's three queues and binds the main one to each of its types.</summary>
    /// <remarks>
    /// Queue arguments cannot change on an existing queue (the broker answers PRECONDITION_FAILED): a new
    /// <see cref="RabbitMqTransportOptions.RetryDelay"/> needs the retry queue deleted first. Bindings are only
    /// added: a type dropped from a subscription stays bound until it is unbound by hand.
    /// </remarks>
    public static async Task<string> DeclareSubscriberAsync(IChannel channel, string exchange, Subscription subscription, TimeSpan retryDelay, CancellationToken cancellationToken)
    {
        await DeclareExchangesAsync(channel, exchange, cancellationToken);
        var dlx = DeadLetterExchange(exchange);
        var main = MainQueue(exchange, subscription.Subscriber);
        var retry = RetryQueue(main);
        var dead = DeadLetterQueue(main);

        // A delivery rejected from the main queue (nack without requeue) goes through the dead-letter exchange into
        // the retry queue, waits there for the retry delay and expires back into the main queue: a retry never spins.
        await channel.QueueDeclareAsync(main, durable: true, exclusive: false, autoDelete: false, arguments: new Dictionary<string, object?>
        {
            ["x-dead-letter-exchange"] = dlx,
            ["x-dead-letter-routing-key"] = retry,
        }, cancellationToken: cancellationToken);
        await channel.QueueDeclareAsync(retry, durable: true, exclusive: false, autoDelete: false, arguments: new Dictionary<string, object?>
        {
            ["x-message-ttl"] = (int)retryDelay.TotalMilliseconds,
            ["x-dead-letter-exchange"] = "",
            ["x-dead-letter-routing-key"] = main,
        }, cancellationToken: cancellationToken);
        await channel.QueueDeclareAsync(dead, durable: true, exclusive: false, autoDelete: false, arguments: null, cancellationToken: cancellationToken);

        await channel.QueueBindAsync(retry, dlx, retry, arguments: null, cancellationToken: cancellationToken);
        await channel.QueueBindAsync(dead, dlx, dead, arguments: null, cancellationToken: cancellationToken);
        foreach (var type in subscription.Types)
        {
            await channel.QueueBindAsync(main, exchange, type, arguments: null, cancellationToken: cancellationToken);
        }

        return main;
    }
}
