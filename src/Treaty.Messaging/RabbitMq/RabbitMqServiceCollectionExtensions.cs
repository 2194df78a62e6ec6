using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.RabbitMq;

/// <summary>Registers the RabbitMQ transport as the <see cref="IMessageTransport"/>.</summary>
public static class RabbitMqServiceCollectionExtensions
{
    /// <summary>
    /// Uses RabbitMQ at <paramref name="uri"/> as the message transport: one <see cref="RabbitMqTransport"/>
    /// singleton, logging through the container's logger factory. The options are validated here, at registration.
    /// </summary>
    public static IServiceCollection UseRabbitMq(this IServiceCollection services, Uri uri, Action<RabbitMqTransportOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = new RabbitMqTransportOptions { Uri = uri };
        configure?.Invoke(options);
        options.Validate();
        services.Replace(ServiceDescriptor.Singleton<IMessageTransport>(provider =>
        {
            options.LoggerFactory ??= provider.GetService<ILoggerFactory>();
            return RabbitMqTransport.Create(options);
        }));
        return services;
    }
}
