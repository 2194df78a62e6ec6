using Treaty.Messaging.Tests;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.RabbitMq.Tests;

/// <summary>
/// The transport compliance suite (the same cases as the embedded transport) on a real broker. Each
/// test gets an exchange of its own; every subscriber's queue is declared before the first send, as
/// a deployment would, because RabbitMQ drops a message whose type no queue is bound to yet.
/// </summary>
[Collection(SharedBrokerCollection.Name)]
public sealed class RabbitMqTransportComplianceTests(RabbitMqBroker broker) : TransportComplianceTests
{
    protected override async Task<IMessageTransport> CreateTransportAsync(string service, IReadOnlyList<Subscription> topology)
    {
        var transport = RabbitMqTransport.Create(Messages.Options(broker, "compliance." + TestId));
        try
        {
            foreach (var subscription in topology)
            {
                await transport.DeclareSubscriptionAsync(subscription, CancellationToken.None);
            }

            return transport;
        }
        catch
        {
            await transport.DisposeAsync();
            throw;
        }
    }
}
