using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>Adds the idempotency middleware to the request pipeline.</summary>
public static class IdempotencyApplicationBuilderExtensions
{
    /// <summary>
    /// Adds the middleware that acts on endpoints marked with <see cref="IdempotencyKeyAttribute"/>
    /// or <see cref="IdempotencyEndpointConventionBuilderExtensions.WithIdempotencyKey{TBuilder}"/>.
    /// Place it after routing and authentication (the key is scoped per authenticated client) and
    /// before the endpoints. Requires <see cref="IdempotencyServiceCollectionExtensions.AddTreatyIdempotency"/>.
    /// </summary>
    public static IApplicationBuilder UseTreatyIdempotency(this IApplicationBuilder app)
    {
        ArgumentNullException.ThrowIfNull(app);
        var middleware = app.ApplicationServices.GetService<IdempotencyMiddleware>()
            ?? throw new InvalidOperationException("UseTreatyIdempotency needs services.AddTreatyIdempotency() (and a registered ParticipantDatabase).");
        return app.Use(next => context => middleware.InvokeAsync(context, next));
    }
}
