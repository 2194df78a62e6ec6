using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Treaty.AspNetCore.Signatures;

/// <summary>
/// Callback verification for a participant: register it, put the middleware in the pipeline, and
/// mark the endpoints the coordinator calls.
/// <code>
/// builder.Services.AddTreatyCallbackVerification(o => o.Secret = builder.Configuration["Treaty:CallbackSecret"]);
/// app.UseTreatyCallbackVerification();
/// app.MapPost("/wallet/reserve", Reserve).RequireTreatySignature();
/// </code>
/// </summary>
public static class TreatyCallbackVerificationExtensions
{
    /// <summary>
    /// Registers callback verification. The options are validated at start. With no secret
    /// configured, marked endpoints pass through unverified (so one build runs with and without).
    /// </summary>
    public static IServiceCollection AddTreatyCallbackVerification(this IServiceCollection services, Action<TreatyCallbackVerificationOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<TreatyCallbackVerificationOptions>().Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<TreatyCallbackVerificationOptions>, TreatyCallbackVerificationOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<CallbackVerifier>();
        return services;
    }

    /// <summary>
    /// Adds the middleware that verifies <c>Treaty-Signature</c> on endpoints marked with
    /// <see cref="RequireTreatySignature{TBuilder}"/> and answers 401 problem+json
    /// (<see cref="TreatyCallbackVerificationDefaults.ProblemType"/>) when it does not verify.
    /// It must run after routing (as it does by default with <c>WebApplication</c>; after
    /// <c>UseRouting()</c> when that is called explicitly) and before anything that reads the body.
    /// </summary>
    /// <exception cref="InvalidOperationException"><see cref="AddTreatyCallbackVerification"/> was not called.</exception>
    public static IApplicationBuilder UseTreatyCallbackVerification(this IApplicationBuilder app)
    {
        if (app.ApplicationServices.GetService<IServiceProviderIsService>()?.IsService(typeof(CallbackVerifier)) != true)
        {
            throw new InvalidOperationException(
                $"Call services.{nameof(AddTreatyCallbackVerification)}(...) before app.{nameof(UseTreatyCallbackVerification)}().");
        }

        return app.UseMiddleware<CallbackVerificationMiddleware>();
    }

    /// <summary>
    /// Requires a valid <c>Treaty-Signature</c> on these endpoints (one endpoint, or every endpoint
    /// of a group) whenever a secret is configured. Enforced by <see cref="UseTreatyCallbackVerification"/>.
    /// </summary>
    public static TBuilder RequireTreatySignature<TBuilder>(this TBuilder builder)
        where TBuilder : IEndpointConventionBuilder
    {
        builder.Add(endpoint => endpoint.Metadata.Add(TreatySignatureRequiredMetadata.Instance));
        return builder;
    }
}
